"""The ONNX photo detectors (CenterNet, NanoDet, BlazeFace) on the real coco-mini photos
(skipped where coco-mini is absent): the library-exact decoding reproduces
``@vladmandic/human``'s own outputs, the default decodings score better against the human
boxes, and the specialists' rows go through the runner as valid labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.specialists.base import ImageRef
from models.specialists.boxes import nms
from models.specialists.images import read_rgb
from models.specialists.photo_detectors import (
    COCO_CLASSES,
    BlazeFaceDetector,
    CenterNetDetector,
    NanoDetDetector,
    resize_bilinear,
)
from models.specialists.registry import BuildContext, build_specialist
from models.specialists.runner import run_specialist
from relabel.metrics import coco_results_map
from tests.conftest import SHARED_DATA
from tests.models.specialists.test_faces import coco_people

PARITY_DIR = SHARED_DATA / "detector-parity"
DETECTORS = {"centernet": CenterNetDetector, "nanodet": NanoDetDetector}


def _library_view(detection) -> tuple[str, int, list[int]]:
    """A detection as the library reports it: label, score truncated to 2 decimals (as an
    integer percentage), box [x, y, w, h] truncated to integers."""
    x0, y0, x1, y1 = detection.box
    return (
        detection.category,
        int(detection.score * 100 + 1e-6),
        [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
    )


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_library_decoding_reproduces_the_library_outputs(name: str, coco_mini_dir: Path) -> None:
    if not (PARITY_DIR / f"{name}.json").is_file():
        pytest.skip(f"the parity fixtures are not present at {PARITY_DIR}")
    expected = json.loads((PARITY_DIR / f"{name}.json").read_text())
    detector = DETECTORS[name](name, {"decode": "library"})
    # 30 of the 80 photos keep the default run short; every label, score and box must agree
    photos = sorted(expected)[:30]
    compared = 0
    for photo in photos:
        got = [_library_view(d) for d in detector.detect(read_rgb(coco_mini_dir / "images" / f"{photo}.jpg"))]
        wanted = [(e["label"], round(e["score"] * 100), e["box"]) for e in expected[photo]]
        assert len(got) == len(wanted), photo
        for (label, score, box), (label_w, score_w, box_w) in zip(got, wanted, strict=True):
            assert label == label_w, photo
            assert abs(score - score_w) <= 1, photo
            assert max(abs(a - b) for a, b in zip(box, box_w, strict=True)) <= 1, (photo, box, box_w)
        compared += len(wanted)
    assert compared > 100


def _coco_ap(detector, coco_dir: Path) -> tuple[float, float]:
    truth = json.loads((coco_dir / "annotations" / "instances.json").read_text())
    category_id = {c["name"]: c["id"] for c in truth["categories"]}
    results = []
    for image in truth["images"]:
        for d in detector.detect(read_rgb(coco_dir / "images" / image["file_name"])):
            x0, y0, x1, y1 = d.box
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": category_id[d.category],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": d.score,
                }
            )
    found = coco_results_map(truth, results)
    return found.map, found.map50


@pytest.mark.slow
@pytest.mark.parametrize(("name", "least_ap"), [("centernet", 0.28), ("nanodet", 0.25)])
def test_default_decoding_scores_better_than_the_library(
    name: str, least_ap: float, coco_mini_dir: Path
) -> None:
    # measured: centernet 0.300 (letterbox) vs 0.249; nanodet 0.273 (NanoDet's own) vs 0.117
    ap, ap50 = _coco_ap(DETECTORS[name](name, {}), coco_mini_dir)
    library_ap, library_ap50 = _coco_ap(DETECTORS[name](name, {"decode": "library"}), coco_mini_dir)
    assert ap >= least_ap
    assert ap > library_ap + 0.04
    assert ap50 > library_ap50


def test_blazeface_finds_faces_on_people_only(coco_mini_dir: Path) -> None:
    photos, people = coco_people(coco_mini_dir)
    detector = BlazeFaceDetector("faces", {})
    inside = faces = on_other_photos = 0
    photos_with_face = set()
    for photo_id, photo in photos.items():
        found = detector.detect(read_rgb(coco_mini_dir / "images" / photo["file_name"]))
        if photo_id not in people:
            on_other_photos += len(found)
            continue
        for face in found:
            faces += 1
            photos_with_face.add(photo_id)
            cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
            inside += any(x <= cx <= x + w and y <= cy <= y + h for x, y, w, h in people[photo_id])
            assert face.category == "face"
    # measured: 17 faces on 14 of the 36 photos with people, all inside a person box, none elsewhere
    assert faces >= 12 and len(photos_with_face) >= 10
    assert inside / faces >= 0.9
    assert on_other_photos <= 2


@pytest.mark.parametrize("kind", ["centernet_onnx", "nanodet_onnx", "blazeface_onnx"])
def test_runner_keeps_every_detection_as_a_valid_label(
    kind: str, coco_mini_dir: Path, tmp_path: Path
) -> None:
    specialist = build_specialist(kind, kind.split("_")[0], {}, BuildContext(workdir=tmp_path))
    files = sorted((coco_mini_dir / "images").glob("*.jpg"))[:6]
    refs = []
    for number, path in enumerate(files):
        height, width = read_rgb(path).shape[:2]
        refs.append(ImageRef(f"{number:064x}", path, width, height))
    raw = sum(len(specialist.detect(read_rgb(ref.path))) for ref in refs)
    run = run_specialist(specialist, refs, batch_size=4, progress=False)
    # boxes past the edge are clipped, not quarantined: every detection is a label
    assert run.labels.height == raw > 0
    assert run.quarantine.height == 0
    assert set(run.labels["category"]) <= {*COCO_CLASSES, "face"}
    assert run.labels["source"].str.starts_with(f"{kind.split('_')[0]}@").all()
    for box, image_id in run.labels.select("box", "image_id").iter_rows():
        ref = next(r for r in refs if r.image_id == image_id)
        assert 0 <= box[0] < box[2] <= ref.width and 0 <= box[1] < box[3] <= ref.height


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown decode 'tf'"):
        CenterNetDetector("c", {"decode": "tf"})
    with pytest.raises(ValueError, match=r"unknown settings \['min_conf'\]"):
        NanoDetDetector("n", {"min_conf": 0.3})
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        BlazeFaceDetector("f", {"model_path": str(tmp_path / "missing.onnx")})


def test_resize_bilinear_samples_as_tensorflow_does() -> None:
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    # without half-pixel centres, output pixel i samples input pixel 2i when halving
    assert resize_bilinear(image, 2, 2)[..., 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]
    # upsampling interpolates and repeats the last row and column
    assert resize_bilinear(image[:2, :2], 4, 4)[..., 0].tolist()[0] == [0.0, 0.5, 1.0, 1.0]


def test_nms_keeps_the_best_of_overlapping_boxes_and_cuts_after_suppressing() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)
    scores = np.array([0.9, 0.95, 0.5, 0.2])
    assert nms(boxes, scores, iou=0.5, min_score=0.1, max_detections=10).tolist() == [1, 2, 3]
    # at most 2 kept, counted after suppression (OpenCV's top_k would count before)
    assert nms(boxes, scores, iou=0.5, min_score=0.1, max_detections=2).tolist() == [1, 2]
    # scores must be over the threshold, compared as float32 against the threshold as a double
    assert nms(boxes, np.array([0.2, 0.2, 0.2, 0.1]), iou=0.5, min_score=0.2, max_detections=10).tolist() == [
        0,
        2,
    ]
    # per class, overlapping boxes of different classes both stay
    assert nms(
        boxes, scores, iou=0.5, min_score=0.1, max_detections=10, classes=np.array([0, 1, 0, 0])
    ).tolist() == [1, 0, 2, 3]
