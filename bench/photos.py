"""Benchmark: the engine on real photos with partial labels, measured against the full labels.

Run from the repository root:

    .venv/bin/python bench/photos.py [--coco ../shared/data/coco-mini] [--drop 0.4] [--seed 0]
                                     [--iterations 1] [--workdir /tmp/relabel-photos]

From a COCO collection (default: the 80 photos of ``../shared/data/coco-mini``) it drops a
seeded share of the boxes (``--drop``, default 40%) and the captions of half the photos, makes a
project on the rest with ``relabel init`` (no hand edit), runs ``relabel demo`` on it (the
set-up, ``--iterations`` refinement iterations, the COCO export of the last one) and prints,
against the full labels:

- box AP and AP50 (pycocotools) of the partial labels (each scored 1) and of the export;
- recall of the dropped boxes (also of those off the frozen evaluation split's photos, which
  the export gives their audited labels) and precision of the added boxes: a machine box in the
  export is right when it matches a dropped box of its class at IoU >= 0.5 that no other added box
  matched (a second box on a kept human box is a duplicate, so wrong); and what other
  thresholds on the consensus boxes (``filter.region.min_score.consensus``) would give;
- survival of the kept human boxes (one export box of the same class at IoU >= 0.95): 100%;
- the faces and OCR lines among the last iteration's filtered labels (faces: share of them
  inside a person box of the full labels);
- caption word recall on the uncaptioned photos: the share of the content words of their
  removed human captions that the machine captions say;
- seconds per image of each phase, and per image of each specialist.

The last line is ``ratio: X`` with X = AP50 of the export / AP50 of the partial labels (above 1:
the engine added more right boxes than wrong ones, ranked by their scores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relabel.config import Params, load_params  # noqa: E402
from relabel.consensus import CONSENSUS_SOURCE  # noqa: E402
from relabel.evaluation_split import frozen_manifest  # noqa: E402
from relabel.merge import box_iou  # noqa: E402
from relabel.metrics import coco_results_map  # noqa: E402
from relabel.scoring import greedy_pairs  # noqa: E402
from resources.layout import (  # noqa: E402
    EXPORTS,
    FILTERED_LABELS,
    FROZEN_SPLIT,
    IMAGES,
    INITIAL_ANNOTATIONS,
    files_dir,
    frames_dir,
    specialist,
)

DEFAULT_COCO = ROOT.parent / "shared" / "data" / "coco-mini"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--coco",
        type=Path,
        default=DEFAULT_COCO,
        help="a folder with images/ and annotations/{instances,captions}.json",
    )
    parser.add_argument("--drop", type=float, default=0.4, help="share of the boxes dropped (default 0.4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of what is dropped (default 0)")
    parser.add_argument("--iterations", type=int, default=1, help="refinement iterations (default 1)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/relabel-photos"),
        help="where the partial labels and the project go (emptied first)",
    )
    return parser.parse_args()


def partial_labels(
    instances: dict, captions: dict, drop: float, seed: int
) -> tuple[dict, dict, set[int], set[int]]:
    """The collection with ``drop`` of its boxes and the captions of half its images removed;
    also the ids of the dropped annotations and of the uncaptioned images."""
    rng = random.Random(seed)
    annotations = sorted(instances["annotations"], key=lambda a: a["id"])
    dropped = {a["id"] for a in rng.sample(annotations, round(drop * len(annotations)))}
    image_ids = sorted(image["id"] for image in captions["images"])
    uncaptioned = set(rng.sample(image_ids, len(image_ids) // 2))
    kept_instances = {**instances, "annotations": [a for a in annotations if a["id"] not in dropped]}
    kept_captions = {
        **captions,
        "annotations": [a for a in captions["annotations"] if a["image_id"] not in uncaptioned],
    }
    return kept_instances, kept_captions, dropped, uncaptioned


def run_engine(
    workdir: Path, coco: Path, instances: Path, captions: Path, iterations: int
) -> tuple[Path, dict]:
    """``relabel init`` then ``relabel demo``; the project and the demo's JSON result."""
    project = workdir / "project"
    binary = Path(sys.executable).parent / "relabel"
    # the project has its own Dagster instance (data/dagster_home), not the caller's
    environment = {
        key: value for key, value in os.environ.items() if key not in ("DAGSTER_HOME", "RELABEL_ROOT")
    }
    subprocess.run(
        [
            str(binary),
            "init",
            str(project),
            "--images",
            str(coco / "images"),
            "--coco",
            str(instances),
            "--captions",
            str(captions),
        ],
        check=True,
        env=environment,
    )
    demo = subprocess.run(
        [str(binary), "--root", str(project), "--json", "demo", "--iterations", str(iterations)],
        check=True,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    return project, json.loads(demo.stdout)


def coco_ap(truth: dict, detections: list[dict]) -> tuple[float, float]:
    """AP and AP50 of ``detections`` (COCO results) against the ``truth`` COCO document."""
    found = coco_results_map(truth, detections)
    return found.map or 0.0, found.map50 or 0.0


def exported_boxes(export: dict, truth: dict) -> list[dict]:
    """The export's boxes in the truth's image and category ids (by file name and category name)."""
    image_of = {Path(image["file_name"]).name: image["id"] for image in truth["images"]}
    exported_image = {image["id"]: image_of[Path(image["file_name"]).name] for image in export["images"]}
    category_of = {category["name"]: category["id"] for category in truth["categories"]}
    exported_category = {category["id"]: category["name"] for category in export["categories"]}
    boxes = []
    for a in export["annotations"]:
        name = exported_category[a["category_id"]]
        if name not in category_of:
            continue
        score = a.get("score")
        boxes.append(
            {
                "image_id": exported_image[a["image_id"]],
                "category_id": category_of[name],
                "bbox": a["bbox"],
                "score": 1.0 if score is None else float(score),
                "human": str(a.get("source", "")).startswith("human"),
            }
        )
    return boxes


def _corners(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def match(first: list[dict], second: list[dict], least_iou: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of boxes of one image and class at IoU >= ``least_iou``, greedily by IoU, each
    box in at most one pair (``relabel.scoring.greedy_pairs``)."""
    candidates = []
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            if a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]:
                iou = float(box_iou(np.array([_corners(a["bbox"])]), np.array([_corners(b["bbox"])]))[0])
                if iou >= least_iou:
                    candidates.append((-iou, i, j))
    candidates.sort()
    return greedy_pairs(
        np.array([i for _, i, _ in candidates], dtype=int), np.array([j for _, _, j in candidates], dtype=int)
    )


def content_words(text: str) -> set[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return {word for word in re.findall(r"[a-z]+", text.lower()) if len(word) > 2 and word not in STOP_WORDS}


def last_labels(data: Path, iteration: int) -> pl.DataFrame:
    folder = frames_dir(FILTERED_LABELS, data, iteration)
    return pl.concat([pl.read_parquet(path) for path in sorted(folder.glob("*.parquet"))], how="vertical")


def specialist_seconds(params: Params, data: Path) -> dict[str, float]:
    """Seconds per image of each annotate specialist, from its materializations' metadata."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(data / "dagster_home")
    per_image = {}
    with DagsterInstance.get() as instance:
        for spec in (*params.annotate.perception, *params.annotate.language):
            if not spec.enabled:
                continue
            records = instance.fetch_materializations(specialist(spec.name), limit=100).records
            seconds = images = 0.0
            for record in records:
                metadata = record.asset_materialization.metadata
                if "seconds" in metadata:
                    seconds += metadata["seconds"].value
                    images += metadata["images"].value
            if images:
                per_image[spec.name] = seconds / images
    return per_image


def main() -> None:
    args = parse_args()
    if not (args.coco / "annotations" / "instances.json").is_file():
        sys.exit(f"no COCO collection at {args.coco}")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    truth = json.loads((args.coco / "annotations" / "instances.json").read_text())
    truth_captions = json.loads((args.coco / "annotations" / "captions.json").read_text())
    instances, captions, dropped, uncaptioned = partial_labels(truth, truth_captions, args.drop, args.seed)
    (args.workdir / "instances.json").write_text(json.dumps(instances))
    (args.workdir / "captions.json").write_text(json.dumps(captions))
    print(
        f"{len(truth['images'])} photos, {len(truth['annotations'])} boxes: "
        f"{len(dropped)} dropped; captions removed from {len(uncaptioned)} photos",
        file=sys.stderr,
    )

    project, result = run_engine(
        args.workdir,
        args.coco,
        args.workdir / "instances.json",
        args.workdir / "captions.json",
        args.iterations,
    )
    last = args.iterations
    params = load_params(project / "params.yaml")
    data = project / params.data_dir
    export = json.loads((files_dir(EXPORTS["coco"], data, last) / "instances.json").read_text())
    boxes = exported_boxes(export, truth)
    human = [{**a, "score": 1.0} for a in instances["annotations"]]
    partial_ap, partial_ap50 = coco_ap(truth, human)
    export_ap, export_ap50 = coco_ap(truth, boxes)

    dropped_boxes = [a for a in truth["annotations"] if a["id"] in dropped]
    added = [b for b in boxes if not b["human"]]
    right = match(added, dropped_boxes, 0.5)
    ids = _file_ids(truth, data)
    # the frozen evaluation split's photos are exported with their audited labels (here the
    # collection's own, accept-all): the engine adds nothing there, by design
    frozen = frozen_photos(data, ids)
    labelled_dropped = [a for a in dropped_boxes if a["image_id"] not in frozen]
    survived = match(human, boxes, 0.95)

    labels = last_labels(data, last)
    faces = labels.filter(pl.col("task") == "object", pl.col("category") == "face")
    people = [
        a
        for a in truth["annotations"]
        if a["category_id"] == next(c["id"] for c in truth["categories"] if c["name"] == "person")
    ]
    ocr_lines = labels.filter(pl.col("task") == "ocr").height
    face_inside = _faces_in_people(faces, people, ids) if faces.height else None
    recall = _caption_word_recall(labels, truth_captions, uncaptioned, ids)

    photos = len(truth["images"])
    rows = [
        ("photos", photos),
        ("boxes (full labels)", len(truth["annotations"])),
        ("boxes kept / dropped", f"{len(instances['annotations'])} / {len(dropped)}"),
        ("AP / AP50 partial labels", f"{partial_ap:.3f} / {partial_ap50:.3f}"),
        ("AP / AP50 export", f"{export_ap:.3f} / {export_ap50:.3f}"),
        ("boxes added by the engine", len(added)),
        (
            "dropped boxes recovered",
            f"{len(right)} / {len(dropped)} = {len(right) / max(len(dropped), 1):.1%}",
        ),
        (
            f"  of those off the {len(frozen)} frozen-split photos",
            f"{len(right)} / {len(labelled_dropped)} = {len(right) / max(len(labelled_dropped), 1):.1%}",
        ),
        ("added boxes right", f"{len(right)} / {len(added)} = {len(right) / max(len(added), 1):.1%}"),
        *consensus_choices(data, truth, dropped_boxes, ids, frozen),
        (
            "kept human boxes surviving",
            f"{len(survived)} / {len(human)} = {len(survived) / max(len(human), 1):.1%}",
        ),
        ("faces (inside a person box)", f"{faces.height} ({face_inside})"),
        ("OCR lines", ocr_lines),
        (
            "caption word recall, uncaptioned photos",
            f"{recall:.1%}" if recall is not None else "no machine caption",
        ),
    ]
    rows += [(f"s/image {phase}", f"{seconds / photos:.2f}") for phase, seconds in result["seconds"].items()]
    rows += [
        (f"s/image specialist {name}", f"{seconds:.3f}")
        for name, seconds in specialist_seconds(params, data).items()
    ]
    print(_table(rows))
    print(f"ratio: {export_ap50 / partial_ap50:.3f}")


def consensus_choices(
    data: Path, truth: dict, dropped_boxes: list[dict], ids: dict[str, int], frozen: set[int]
) -> list[tuple[str, str]]:
    """What other thresholds on the consensus boxes (``filter.region.min_score.consensus``) would
    give: of the fused boxes the initial annotations added (not folded into a human box, not in
    conflict with one, not on a frozen-split photo), those scored at least 0.3 ... 0.5, how many
    are right and the share of the dropped boxes they find."""
    frames = sorted(frames_dir(INITIAL_ANNOTATIONS, data).glob("*.parquet"))
    added = pl.concat([pl.read_parquet(path) for path in frames], how="vertical").filter(
        pl.col("task") == "object",
        pl.col("source") == CONSENSUS_SOURCE,
        pl.col("linked_label_id").is_null(),
        pl.col("image_id").is_in(list(ids)),
    )
    category_of = {category["name"]: category["id"] for category in truth["categories"]}
    candidates = [
        {
            "image_id": ids[image_id],
            "category_id": category_of[category],
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "score": score,
        }
        for image_id, category, box, score in added.select("image_id", "category", "box", "score").iter_rows()
        if category in category_of and ids[image_id] not in frozen
    ]
    rows = []
    for least in (0.3, 0.35, 0.4, 0.45, 0.5):
        chosen = [box for box in candidates if box["score"] >= least]
        right = match(chosen, dropped_boxes, 0.5)
        rows.append(
            (
                f"consensus boxes >= {least}: right; recovered",
                (
                    f"{len(right)} / {len(chosen)} = {len(right) / max(len(chosen), 1):.1%}; "
                    f"{len(right) / max(len(dropped_boxes), 1):.1%}"
                ),
            )
        )
    return rows


def _table(rows: list[tuple[str, object]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _file_ids(truth: dict, data: Path) -> dict[str, int]:
    """image_id (the engine's) -> the truth's image id, through the ingested images' files."""
    images = pl.concat([pl.read_parquet(p) for p in sorted(frames_dir(IMAGES, data).glob("*.parquet"))])
    by_name = {image["file_name"]: image["id"] for image in truth["images"]}
    return {
        image_id: by_name[Path(uri).name]
        for image_id, uri in images.select("image_id", "uri").iter_rows()
        if Path(uri).name in by_name
    }


def frozen_photos(data: Path, ids: dict[str, int]) -> set[int]:
    """The truth's ids of the photos in the project's frozen evaluation split."""
    manifest = frozen_manifest(files_dir(FROZEN_SPLIT, data))
    if manifest is None:
        return set()
    return {ids[image_id] for image_id in manifest["image_id"] if image_id in ids}


def _faces_in_people(faces: pl.DataFrame, people: list[dict], ids: dict[str, int]) -> str:
    inside = 0
    for image_id, box in faces.select("image_id", "box").iter_rows():
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        inside += any(
            p["image_id"] == ids.get(image_id)
            and p["bbox"][0] <= cx <= p["bbox"][0] + p["bbox"][2]
            and p["bbox"][1] <= cy <= p["bbox"][1] + p["bbox"][3]
            for p in people
        )
    return f"{inside / faces.height:.0%} inside"


def _caption_word_recall(
    labels: pl.DataFrame, truth_captions: dict, uncaptioned: set[int], ids: dict[str, int]
) -> float | None:
    said: dict[int, set[str]] = {}
    for image_id, text in (
        labels.filter(pl.col("task") == "brief_caption", ~pl.col("source").str.starts_with("human"))
        .select("image_id", "text")
        .iter_rows()
    ):
        if ids.get(image_id) in uncaptioned:
            said.setdefault(ids[image_id], set()).update(content_words(text or ""))
    wanted: dict[int, set[str]] = {}
    for caption in truth_captions["annotations"]:
        if caption["image_id"] in uncaptioned:
            wanted.setdefault(caption["image_id"], set()).update(content_words(caption["caption"]))
    if not said:
        return None
    return sum(len(said.get(image, set()) & words) for image, words in wanted.items()) / max(
        sum(len(words) for words in wanted.values()), 1
    )


if __name__ == "__main__":
    main()
