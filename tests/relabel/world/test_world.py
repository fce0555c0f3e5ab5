"""The embedded world as written to disk: determinism, ground truth, human labels, defects."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from relabel.config import HumanNoiseParams, WorldParams
from relabel.labels import check_schema
from relabel.world import DEFECT_KINDS, WORLD_VERSION, WorldSummary, render_world
from relabel.world.ontology import CATEGORY_BY_NAME
from relabel.world.scene import MIN_VISIBLE

TINY = WorldParams(seed=3, n_images=12)


def _render(root: Path, params: WorldParams) -> tuple[Path, Path, WorldSummary]:
    world_dir, truth_dir = root / "world", root / "truth"
    summary = render_world(params, world_dir, truth_dir, progress=False)
    return world_dir, truth_dir, summary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, WorldSummary]:
    return _render(tmp_path_factory.mktemp("tiny"), TINY)


@pytest.fixture(scope="module")
def truth(tiny) -> pl.DataFrame:
    return pl.read_parquet(tiny[1] / "labels.parquet")


@pytest.fixture(scope="module")
def scenes(tiny) -> list[dict]:
    return [json.loads(line) for line in (tiny[1] / "scenes.jsonl").read_text(encoding="utf-8").splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def _rows(truth: pl.DataFrame, task: str) -> list[dict]:
    return truth.filter(pl.col("task") == task).to_dicts()


def test_same_params_give_byte_identical_files(tiny, tmp_path):
    _render(tmp_path, TINY)
    first, second = _files(tiny[0].parent), _files(tmp_path)
    assert sorted(first) == sorted(second)
    assert len(first) > TINY.n_images  # images plus the json, jsonl and parquet files
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_another_seed_gives_another_world(tiny, tmp_path):
    world_dir, truth_dir, _ = _render(tmp_path, TINY.model_copy(update={"seed": 4}))
    assert (truth_dir / "labels.parquet").read_bytes() != (tiny[1] / "labels.parquet").read_bytes()
    ours = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tiny[0] / "images").glob("*.png")}
    theirs = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (world_dir / "images").glob("*.png")}
    assert ours.isdisjoint(theirs)


def test_ontology_has_enough_categories_and_rare_ones(tiny):
    ontology = json.loads((tiny[0] / "ontology.json").read_text(encoding="utf-8"))
    categories = ontology["categories"]
    assert len(categories) >= 12
    assert len({c["id"] for c in categories}) == len({c["name"] for c in categories}) == len(categories)
    assert sum(c["rare"] for c in categories) >= 2
    assert all(c["colours"] and c["supercategory"] for c in categories)


def test_collections_split_about_seventy_thirty(tiny, scenes):
    summary = tiny[2]
    assert summary.images_per_collection == {"curated": 8, "web": 4}
    for scene in scenes:
        folder = "images" if scene["collection"] == "curated" else "web"
        assert scene["file"].startswith(folder + "/")
        assert (tiny[0] / scene["file"]).is_file()


def test_ground_truth_is_in_the_label_schema(truth, scenes):
    check_schema(truth, "labels")
    assert truth["label_id"].n_unique() == len(truth)
    assert set(truth["source"]) == {f"world@{WORLD_VERSION}"}
    assert set(truth["score"]) == {1.0}
    assert set(truth["iteration"]) == {0}
    assert set(truth["status"].cast(pl.String)) == {"audited"}
    assert set(truth["image_id"]) == {scene["image_id"] for scene in scenes}
    for task in ("brief_caption", "detailed_caption", "more_detailed_caption"):
        assert len(_rows(truth, task)) == len(scenes)


def test_image_ids_are_the_sha256_of_the_png_files(tiny, scenes):
    for scene in scenes:
        assert scene["image_id"] == hashlib.sha256((tiny[0] / scene["file"]).read_bytes()).hexdigest()
        with Image.open(tiny[0] / scene["file"]) as image:
            assert image.size == (scene["width"], scene["height"])


def test_object_regions_are_inside_the_image_with_polygons(truth):
    objects = _rows(truth, "object") + _rows(truth, "region_caption") + _rows(truth, "phrase_grounding")
    assert objects
    for row in objects:
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= TINY.width and 0 <= y0 < y1 <= TINY.height
        assert row["region_kind"] == "object" and row["category"]
        assert row["polygon"]
        for ring in row["polygon"]:
            assert len(ring) >= 6 and len(ring) % 2 == 0
            assert all(x0 <= x <= x1 for x in ring[0::2]) and all(y0 <= y <= y1 for y in ring[1::2])
    assert all(row["text"] == row["category"] for row in _rows(truth, "object"))


def test_ocr_quads_are_inside_the_image_and_turned(truth):
    ocr = _rows(truth, "ocr")
    assert ocr, "text_probability 0.45 over 12 scenes writes some signs"
    for row in ocr:
        quad = row["quad"]
        xs, ys = quad[0::2], quad[1::2]
        assert all(0 <= x <= TINY.width for x in xs) and all(0 <= y <= TINY.height for y in ys)
        assert row["box"] == pytest.approx([min(xs), min(ys), max(xs), max(ys)], abs=0.01)
        assert ys[0] != pytest.approx(ys[1], abs=0.5), "the top edge of a turned line is not horizontal"
        assert row["region_kind"] == "text" and row["text"].strip()


def test_phrase_spans_name_the_grounded_objects(truth):
    captions = {
        (row["image_id"], row["text"]) for row in truth.filter(pl.col("annotation_type") == "text").to_dicts()
    }
    grounded = _rows(truth, "phrase_grounding")
    assert len(grounded) > len(captions)
    for row in grounded:
        phrase = row["text"][row["phrase_start"] : row["phrase_end"]]
        assert 0 <= row["phrase_start"] < row["phrase_end"] <= len(row["text"])
        assert phrase == phrase.strip() and phrase
        names = (row["category"], CATEGORY_BY_NAME[row["category"]].plural)
        assert any(name in phrase.lower() for name in names)
        assert (row["image_id"], row["text"]) in captions


def test_captions_read_the_signs(truth, scenes):
    for scene in scenes:
        detailed = _rows(truth.filter(pl.col("image_id") == scene["image_id"]), "detailed_caption")[0]["text"]
        for text in scene["texts"]:
            assert f'"{text["text"]}"' in detailed


def test_scene_graph_boxes_are_the_visible_part(scenes, truth):
    objects = [obj for scene in scenes for obj in scene["objects"]]
    assert len(objects) == len(_rows(truth, "object"))
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        dx0, dy0, dx1, dy1 = obj["drawn_box"]
        assert dx0 <= x0 < x1 <= dx1 and dy0 <= y0 < y1 <= dy1
        assert MIN_VISIBLE <= obj["visible_fraction"] <= 1
        behind = [r for r in obj["relations"] if r["relation"] == "behind"]
        assert obj["visible_fraction"] > 0.95 or behind, "a hidden part has something in front of it"
    assert any(obj["visible_fraction"] < 1 for obj in objects), "some objects overlap"


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _defect_records(summary: WorldSummary) -> set[str]:
    return {defect.record for defect in summary.defects if defect.record}


def test_human_instances_are_coco_boxes_near_the_truth(tiny, scenes):
    world_dir, _, summary = tiny
    coco = json.loads((world_dir / "human" / "instances.json").read_text(encoding="utf-8"))
    assert {"images", "annotations", "categories"} <= set(coco)
    ontology = json.loads((world_dir / "ontology.json").read_text(encoding="utf-8"))
    assert {c["id"] for c in coco["categories"]} == {c["id"] for c in ontology["categories"]}
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == len(coco["images"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    truth_boxes = {Path(s["file"]).name: [o["box"] for o in s["objects"]] for s in scenes}
    skipped = _defect_records(summary)
    checked = 0
    for annotation in coco["annotations"]:
        assert annotation["image_id"] in images
        if f"annotation:{annotation['id']}" in skipped:
            continue
        x, y, w, h = annotation["bbox"]
        assert w > 0 and h > 0 and annotation["area"] > 0 and annotation["iscrowd"] == 0
        box = [x, y, x + w, y + h]
        assert (
            max(_iou(box, truth) for truth in truth_boxes[images[annotation["image_id"]]["file_name"]]) > 0.3
        )
        for ring in annotation.get("segmentation", []):
            assert len(ring) >= 6
        checked += 1
    assert checked > 0
    assert any("segmentation" in a for a in coco["annotations"]), "some annotators traced polygons"
    unlabelled = set(images) - {a["image_id"] for a in coco["annotations"]}
    assert unlabelled, "images without any human label are still listed"


def test_human_captions_and_alt_text(tiny):
    world_dir, _, summary = tiny
    captions = json.loads((world_dir / "human" / "captions.json").read_text(encoding="utf-8"))
    assert captions["annotations"] and summary.human_labels["captions"] == len(captions["annotations"])
    image_ids = {image["id"] for image in captions["images"]}
    assert all(a["image_id"] in image_ids and a["caption"].strip() for a in captions["annotations"])
    lines = (world_dir / "web" / "alt_text.jsonl").read_bytes().splitlines()
    assert lines
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            continue  # the injected non-UTF-8 line
        assert set(record) == {"file_name", "alt_text"}
        assert (world_dir / "web" / record["file_name"]).is_file()


def test_injected_defects_match_the_files_on_disk(tiny):
    world_dir, truth_dir, summary = tiny
    assert sorted(defect.kind for defect in summary.defects) == sorted(DEFECT_KINDS)
    coco = json.loads((world_dir / "human" / "instances.json").read_text(encoding="utf-8"))
    annotations = {f"annotation:{a['id']}": a for a in coco["annotations"]}
    images = {f"image:{i['id']}": i for i in coco["images"]}
    curated = {p.read_bytes() for p in (world_dir / "images").glob("*.png")}
    truth_ids = set(pl.read_parquet(truth_dir / "labels.parquet")["image_id"])
    for defect in summary.defects:
        path = world_dir / defect.file
        if defect.kind == "truncated_image":
            assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
            with pytest.raises(OSError), Image.open(path) as image:
                image.load()
            assert hashlib.sha256(path.read_bytes()).hexdigest() not in truth_ids
        elif defect.kind == "duplicate_image":
            assert path.parent.name == "web" and path.read_bytes() in curated
        elif defect.kind == "box_outside_image":
            x, y, _, _ = annotations[defect.record]["bbox"]
            assert x > TINY.width and y > TINY.height
        elif defect.kind == "zero_area_box":
            _, _, w, h = annotations[defect.record]["bbox"]
            assert w * h == 0
        elif defect.kind == "missing_image_file":
            assert not path.exists() and images[defect.record]["file_name"] == path.name
        elif defect.kind == "invalid_utf8":
            bad = [line for line in path.read_bytes().splitlines() if not _is_utf8(line)]
            assert len(bad) == 1 and defect.record.removeprefix("line:").encode() in bad[0]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_without_defects_everything_is_clean(tmp_path):
    params = TINY.model_copy(update={"human": HumanNoiseParams(inject_defects=False)})
    world_dir, _, summary = _render(tmp_path, params)
    assert summary.defects == ()
    pngs = sorted((world_dir / "images").glob("*.png")) + sorted((world_dir / "web").glob("*.png"))
    assert len(pngs) == params.n_images
    assert len({p.read_bytes() for p in pngs}) == len(pngs), "no duplicates"
    for path in pngs:
        with Image.open(path) as image:
            image.load()
    (world_dir / "web" / "alt_text.jsonl").read_bytes().decode("utf-8")
    coco = json.loads((world_dir / "human" / "instances.json").read_text(encoding="utf-8"))
    assert all((world_dir / "images" / image["file_name"]).is_file() for image in coco["images"])
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= params.width and y + h <= params.height


def test_summary_counts_what_was_written(tiny, truth):
    summary = tiny[2]
    assert summary.n_images == TINY.n_images
    assert sum(summary.instances_per_category.values()) == len(_rows(truth, "object"))
    assert summary.n_text_regions == len(_rows(truth, "ocr"))
    assert summary.n_groundings == len(_rows(truth, "phrase_grounding"))
    assert summary.captions_per_granularity["brief_caption"] == TINY.n_images
    metadata = summary.as_metadata()
    assert metadata["images.curated"] == 8 and metadata["defects"] == len(DEFECT_KINDS)
    assert all(isinstance(value, (int, float, str)) for value in metadata.values())


def test_small_images_and_crowded_scenes_stay_valid(tmp_path):
    params = WorldParams(seed=11, n_images=6, width=64, height=64, max_objects=10, text_probability=1.0)
    _, truth_dir, summary = _render(tmp_path, params)
    truth = pl.read_parquet(truth_dir / "labels.parquet")
    check_schema(truth, "labels")
    for row in truth.filter(pl.col("box").is_not_null()).to_dicts():
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert summary.n_images == 6


@pytest.mark.slow
def test_rare_categories_stay_under_two_percent(tmp_path):
    _, _, summary = _render(tmp_path, WorldParams(seed=21, n_images=600))
    total = sum(summary.instances_per_category.values())
    ontology = json.loads((tmp_path / "world" / "ontology.json").read_text(encoding="utf-8"))
    rare = [c["name"] for c in ontology["categories"] if c["rare"]]
    assert total > 1500
    for name in rare:
        assert 0 < summary.instances_per_category[name] < 0.02 * total


def test_a_few_curated_images_have_a_human_detailed_caption_from_the_truth(tmp_path, truth):
    # the tiny world's rate, raised so that a handful are written
    world_dir, truth_dir, summary = _render(
        tmp_path,
        TINY.model_copy(update={"human": TINY.human.model_copy(update={"detailed_caption_rate": 0.5})}),
    )
    document = json.loads((world_dir / "human" / "detailed_captions.json").read_text(encoding="utf-8"))
    assert summary.human_labels["detailed_captions"] == len(document["annotations"]) > 0
    files = {image["id"]: image["file_name"] for image in document["images"]}
    scenes_by_file = {
        Path(json.loads(line)["file"]).name: json.loads(line)
        for line in (truth_dir / "scenes.jsonl").read_text(encoding="utf-8").splitlines()
    }
    detailed = pl.read_parquet(truth_dir / "labels.parquet").filter(pl.col("task") == "detailed_caption")
    for annotation in document["annotations"]:
        scene = scenes_by_file[files[annotation["image_id"]]]
        assert scene["collection"] == "curated"
        (written,) = detailed.filter(pl.col("image_id") == scene["image_id"])["text"].to_list()
        assert annotation["caption"] == written
    # the other human labels do not move when the rate does
    baseline_dir = _render(tmp_path / "baseline", TINY)[0]
    for name in ("instances.json", "captions.json"):
        assert (world_dir / "human" / name).read_bytes() == (baseline_dir / "human" / name).read_bytes()
