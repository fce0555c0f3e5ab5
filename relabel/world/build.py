"""Render the embedded world: images, the human labels they come with, and the ground truth.

Layout written (byte-identical for the same ``WorldParams``)::

    world_dir/ontology.json                 the seed ontology the engine may read
    world_dir/images/*.png                  curated collection (~70%)
    world_dir/human/instances.json          its COCO boxes and polygons (noisy, partial)
    world_dir/human/captions.json           its COCO brief captions (some images)
    world_dir/web/*.png                     web collection (~30%)
    world_dir/web/alt_text.jsonl            its alt-text sidecar (noisy, partial)
    truth_dir/labels.parquet                ground truth in the label-store schema
    truth_dir/scenes.jsonl                  the scene graph of every image

Randomness comes from numpy generators seeded with ``(seed, stream, image index)``, so each
image depends only on its own index, and changing the noise of the human labels does not
change a single pixel.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image
from tqdm import tqdm

from relabel.config import WorldParams
from relabel.preview import contact_sheet, draw_labels
from relabel.world.captions import scene_captions
from relabel.world.defects import Defect, alt_text_line, inject_defects
from relabel.world.human import alt_text, coco_categories, human_annotations, human_captions
from relabel.world.ontology import CATEGORIES, ontology_document
from relabel.world.scene import Scene, compose_scene
from relabel.world.truth import labels_frame, truth_rows

# bump whenever a change alters any output byte: it is part of every ground-truth row's source
WORLD_VERSION = "1.0"
WEB_SHARE = 0.3

_SCENE, _CAPTIONS, _HUMAN, _COLLECTIONS, _DEFECTS, _DETAILED = range(6)  # random streams


@dataclass(frozen=True)
class WorldSummary:
    """What ``render_world`` wrote, counted."""

    world_version: str
    seed: int
    images_per_collection: dict[str, int]
    instances_per_category: dict[str, int]
    n_text_regions: int
    captions_per_granularity: dict[str, int]
    n_groundings: int
    human_labels: dict[str, int]
    defects: tuple[Defect, ...]

    @property
    def n_images(self) -> int:
        """Rendered scenes in all collections (injected defect files not counted)."""
        return sum(self.images_per_collection.values())

    @property
    def rare_instance_share(self) -> float:
        """The share of all object instances that belong to a rare category."""
        rare = sum(self.instances_per_category.get(c.name, 0) for c in CATEGORIES if c.rare)
        return rare / max(1, sum(self.instances_per_category.values()))

    def as_metadata(self) -> dict[str, int | float | str]:
        """A flat view for display (Dagster metadata): ``images.curated``, ``instances.ball``..."""
        flat: dict[str, int | float | str] = {
            "world_version": self.world_version,
            "seed": self.seed,
            "images": self.n_images,
        }
        flat.update({f"images.{name}": count for name, count in self.images_per_collection.items()})
        flat["instances"] = sum(self.instances_per_category.values())
        flat.update({f"instances.{name}": count for name, count in self.instances_per_category.items()})
        flat["rare_instance_share"] = round(self.rare_instance_share, 4)
        flat["text_regions"] = self.n_text_regions
        flat.update({f"captions.{task}": count for task, count in self.captions_per_granularity.items()})
        flat["groundings"] = self.n_groundings
        flat.update({f"human.{kind}": count for kind, count in self.human_labels.items()})
        flat["defects"] = len(self.defects)
        flat["defect_kinds"] = ", ".join(defect.kind for defect in self.defects)
        return flat


def render_world(
    params: WorldParams, world_dir: Path, truth_dir: Path, progress: bool = True
) -> WorldSummary:
    """Render the world described by ``params``: images and human labels into ``world_dir``,
    ground truth into ``truth_dir``; return what was written, counted.

    The same params give byte-identical files. PNGs left in ``images/`` and ``web/`` by an
    earlier render are removed first, so the folders hold exactly this world.
    """
    world_dir, truth_dir = Path(world_dir), Path(truth_dir)
    for folder in (world_dir / "images", world_dir / "web", world_dir / "human", truth_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in [*(world_dir / "images").glob("*.png"), *(world_dir / "web").glob("*.png")]:
        stale.unlink()
    _write_json(world_dir / "ontology.json", ontology_document(WORLD_VERSION), indent=1)

    collections = _collections(params)
    scenes = []
    for index in tqdm(range(params.n_images), desc="rendering world", unit="image", disable=not progress):
        scenes.append(_render_scene(params, index, collections[index], world_dir))

    source = f"world@{WORLD_VERSION}"
    rows, captions_of = [], {}
    for scene in scenes:
        captions = scene_captions(scene, np.random.default_rng([params.seed, _CAPTIONS, scene.index]))
        captions_of[scene.index] = captions
        rows.extend(truth_rows(scene, captions, source))
    labels = labels_frame(rows)
    labels.write_parquet(truth_dir / "labels.parquet")
    with open(truth_dir / "scenes.jsonl", "w", encoding="utf-8") as handle:
        for scene in scenes:
            handle.write(json.dumps(scene.to_json(), ensure_ascii=False) + "\n")

    instances, captions_doc, alt_lines, tally = _human_labels(params, scenes)
    defects: list[Defect] = []
    if params.human.inject_defects:
        defect_rng = np.random.default_rng([params.seed, _DEFECTS])
        defects = inject_defects(defect_rng, world_dir, scenes, instances, alt_lines, params.n_images)
    _write_json(world_dir / "human" / "instances.json", instances)
    _write_json(world_dir / "human" / "captions.json", captions_doc)
    detailed_doc = _detailed_captions(params, scenes, captions_of, instances["images"])
    tally["detailed_captions"] = len(detailed_doc["annotations"])
    _write_json(world_dir / "human" / "detailed_captions.json", detailed_doc)
    (world_dir / "web" / "alt_text.jsonl").write_bytes(b"".join(alt_lines.values()))
    return _summary(params, scenes, labels, tally, defects)


def _collections(params: WorldParams) -> list[str]:
    rng = np.random.default_rng([params.seed, _COLLECTIONS])
    web = set(rng.choice(params.n_images, size=round(WEB_SHARE * params.n_images), replace=False).tolist())
    return ["web" if index in web else "curated" for index in range(params.n_images)]


def _render_scene(params: WorldParams, index: int, collection: str, world_dir: Path) -> Scene:
    folder = "images" if collection == "curated" else "web"
    file = f"{folder}/{index:05d}.png"
    image, scene = compose_scene(
        np.random.default_rng([params.seed, _SCENE, index]), params, index, collection, file
    )
    png = encode_png(image)
    (world_dir / file).write_bytes(png)
    return replace(scene, image_id=hashlib.sha256(png).hexdigest())


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image, with fixed settings so the same pixels give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _human_labels(
    params: WorldParams, scenes: list[Scene]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes], Counter[str]]:
    """The COCO instances and captions documents of the curated collection, the alt-text
    lines of the web collection (by file name) and a tally of the labels by kind."""
    noise = params.human
    tally: Counter[str] = Counter()
    images, annotations, captioned, captions = [], [], [], []
    alt_lines: dict[str, bytes] = {}
    for scene in scenes:
        rng = np.random.default_rng([params.seed, _HUMAN, scene.index])
        file_name = Path(scene.file).name
        if scene.collection == "web":
            text, noise_kind = alt_text(scene, rng, noise)
            if text is not None:
                alt_lines[file_name] = alt_text_line(file_name, text)
                tally["alt_texts"] += 1
                tally["noisy_alt_texts"] += noise_kind is not None
            continue
        entry = {
            "id": len(images) + 1,
            "file_name": file_name,
            "width": scene.width,
            "height": scene.height,
        }
        images.append(entry)
        if rng.random() < noise.unlabelled_image_rate:
            tally["unlabelled_images"] += 1
            continue
        annotations.extend(human_annotations(scene, rng, noise, entry["id"], len(annotations) + 1, tally))
        texts = human_captions(scene, rng, noise)
        if texts:
            captioned.append(entry)
        for text in texts:
            captions.append({"id": len(captions) + 1, "image_id": entry["id"], "caption": text})
    tally["captions"] = len(captions)
    info = {"description": "relabel embedded world: human labels", "version": WORLD_VERSION}
    instances = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    captions_doc = {"info": info, "images": captioned, "annotations": captions}
    return instances, captions_doc, alt_lines, tally


def _detailed_captions(
    params: WorldParams, scenes: list[Scene], captions_of: dict[int, list], coco_images: list[dict[str, Any]]
) -> dict[str, Any]:
    """The few detailed captions the curators wrote (``human.detailed_caption_rate`` of the
    curated images, from a stream of their own so the other labels stay as they were): the
    small set a caption specialist is tuned on, as COCO captions."""
    entry_of = {entry["file_name"]: entry for entry in coco_images}
    images, annotations = [], []
    for scene in scenes:
        entry = entry_of.get(Path(scene.file).name)
        if scene.collection != "curated" or entry is None:
            continue
        if (
            np.random.default_rng([params.seed, _DETAILED, scene.index]).random()
            >= params.human.detailed_caption_rate
        ):
            continue
        (text,) = [caption.text for caption in captions_of[scene.index] if caption.task == "detailed_caption"]
        images.append(entry)
        annotations.append({"id": len(annotations) + 1, "image_id": entry["id"], "caption": text})
    info = {"description": "relabel embedded world: human detailed captions", "version": WORLD_VERSION}
    return {"info": info, "images": images, "annotations": annotations}


def _summary(
    params: WorldParams,
    scenes: list[Scene],
    labels: pl.DataFrame,
    tally: Counter[str],
    defects: list[Defect],
) -> WorldSummary:
    per_category = Counter(obj.category for scene in scenes for obj in scene.objects)
    per_task = Counter(labels.get_column("task").cast(pl.String).to_list())
    human_kinds = (
        "boxes",
        "polygons",
        "missed_objects",
        "wrong_categories",
        "unlabelled_images",
        "captions",
        "detailed_captions",
        "alt_texts",
        "noisy_alt_texts",
    )
    return WorldSummary(
        world_version=WORLD_VERSION,
        seed=params.seed,
        images_per_collection={
            name: sum(s.collection == name for s in scenes) for name in ("curated", "web")
        },
        instances_per_category={c.name: per_category[c.name] for c in CATEGORIES},
        n_text_regions=per_task["ocr"],
        captions_per_granularity={
            task: per_task[task] for task in ("brief_caption", "detailed_caption", "more_detailed_caption")
        },
        n_groundings=per_task["phrase_grounding"],
        human_labels={kind: int(tally[kind]) for kind in human_kinds},
        defects=tuple(defects),
    )


def _write_json(path: Path, document: Any, indent: int | None = None) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")


def world_preview(world_dir: Path, truth_dir: Path, count: int = 8, columns: int = 4) -> Image.Image:
    """A contact sheet of the first ``count`` scenes with their ground-truth objects, text
    regions and brief caption drawn on."""
    world_dir, truth_dir = Path(world_dir), Path(truth_dir)
    with open(truth_dir / "scenes.jsonl", encoding="utf-8") as handle:
        scenes = [json.loads(line) for _, line in zip(range(count), handle, strict=False)]
    labels = pl.read_parquet(truth_dir / "labels.parquet").filter(
        pl.col("task").cast(pl.String).is_in(["object", "ocr", "brief_caption"])
    )
    sheets = []
    for scene in scenes:
        with Image.open(world_dir / scene["file"]) as image:
            sheets.append(draw_labels(image, labels.filter(pl.col("image_id") == scene["image_id"])))
    return contact_sheet(sheets, columns=columns)
