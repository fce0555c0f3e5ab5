"""Export one iteration's labels out of relabel, in the formats other tools read.

Every writer takes an ``images`` frame (``IMAGES_SCHEMA``), a ``labels`` frame
(``LABELS_SCHEMA``; pick the rows with ``select_labels``), the output ``folder`` and the
``data_dir`` that relative image uris are relative to, and returns the files it wrote:

``coco`` (``write_coco``)
    ``instances.json`` (COCO detection: boxes, polygons, crowd RLE), ``captions.json`` (brief
    captions) and ``detailed_captions.json`` (detailed captions, COCO captions format). For
    pycocotools and the COCO-reading tools, and for relabel's own ``coco`` source, which reads
    the three files back.
``florence2`` (``models.corpus.write_florence2_jsonl``, which needs the task serialisation)
    ``florence2.jsonl``: one line per Florence-2 (image, prompt, target) example of every task
    the labels support (``models.corpus.corpus_examples``), to fine-tune a public Florence-2
    checkpoint.
``hf-parquet`` (``write_hf_parquet``)
    ``images.parquet`` and ``labels.parquet``: the label store itself, lossless, in types every
    parquet reader knows (enums as strings, fixed-size arrays as lists). Each loads with Hugging
    Face ``datasets.load_dataset("parquet", ...)`` (one dataset per table: the tables have
    different columns, so they are two configs, not two splits of one), and the folder comes
    back into relabel as a ``parquet`` source. ``embed_images=True`` adds ``image_bytes.parquet``.
``yolo`` (``write_yolo``)
    ``data.yaml``, ``labels/<stem>.txt`` and ``images/<stem>.<ext>`` links, for Ultralytics YOLO
    detection training.

Which label rows a format can hold is ``WRITTEN`` (COCO and YOLO hold object boxes, COCO also
brief and detailed captions); the others are left out. Labels of images not in ``images`` are
left out too, so exporting a subset of the images (one split, say) exports their labels only.

Images are named by absolute paths (the ``uri`` resolved against ``data_dir`` with
``path_of_uri``, made absolute from the current directory when ``data_dir`` is relative,
symlinks not followed, as ingest names files), so the export is read from anywhere on the
machine that holds the images, by pycocotools and by relabel's ingest alike.

Every writer is byte-deterministic: rows are sorted by stable keys (image ids, label ids), JSON
is written with sorted keys and fixed separators, parquet with fixed settings, so the same
frames give byte-identical files. ``export_labels`` clears the folder, writes one format and
returns an ``ExportResult``. Plain functions: no Dagster, no MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pycocotools import mask

from relabel.files import path_of_uri
from relabel.labels import (
    HUMAN_SOURCE,
    LABEL_STATUSES,
    SchemaError,
    check_schema,
    frame,
)
from relabel.metrics import rasterise
from relabel.task_tokens import TASK_SOURCES

# parquet is written with these fixed settings, whose output the tests check is byte-identical
# from one write to the next
_PARQUET = {"compression": "zstd", "statistics": False}

# the caption files of relabel's coco source (``SourceParams.captions`` and
# ``detailed_captions``) and the label task each holds
COCO_CAPTION_FILES = {
    "captions.json": "brief_caption",
    "detailed_captions.json": "detailed_caption",
}

_CATEGORY = pl.coalesce("category", "text")  # an object's name; ``text`` where ``category`` is null
_OBJECT_BOXES = (pl.col("task") == "object") & pl.col("box").is_not_null() & _CATEGORY.is_not_null()

# the label rows each format writes; it cannot express the others
WRITTEN: dict[str, pl.Expr] = {
    "coco": _OBJECT_BOXES | pl.col("task").is_in(list(COCO_CAPTION_FILES.values())),
    # alt_text feeds no Florence-2 task (relabel.task_tokens.TASK_SOURCES)
    "florence2": pl.col("task").is_in(sorted({t for ts in TASK_SOURCES.values() for t in ts})),
    "hf-parquet": pl.lit(True),
    # YOLO has no crowd regions: a box around a whole crowd would teach the detector to draw one
    # (Ultralytics' own COCO converter leaves them out too)
    "yolo": _OBJECT_BOXES & pl.col("is_crowd").fill_null(False).not_(),
}


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """The labels chosen for an export (``select_labels``).

    ``labels`` is in ``LABELS_SCHEMA``, sorted by ``label_id``; ``from_quarantine`` holds the
    sorted ids of its rows that were brought back from the quarantine (they keep the status
    they had when they were quarantined); ``in_conflict`` the sorted ids of the machine boxes
    left out because they conflict with a person's box (``select_labels``).
    """

    labels: pl.DataFrame
    from_quarantine: tuple[str, ...]
    in_conflict: tuple[str, ...] = ()


def select_labels(
    labels: pl.DataFrame,
    *,
    min_score: float | None = None,
    statuses: Iterable[str] | None = None,
    quarantine: pl.DataFrame | None = None,
    include_quarantined: bool = False,
    categories: Iterable[str] | None = None,
) -> Selection:
    """The labels to export: ``labels`` with score >= ``min_score``, status in ``statuses``
    and, for labels with a category, category in ``categories``; never a machine object box
    in conflict with a person's (one that ``relabel.merge`` linked to a human or audited object
    label of another category): each object is exported once, with the person's category,
    and the conflict stays in the labels for a review.

    Parameters
    ----------
    labels
        A labels frame (``LABELS_SCHEMA``).
    min_score
        Keep rows with ``score >= min_score`` (None: no score filter). A null score counts as
        1.0 for a human source (``source`` starting with ``"human"``: people do not write a
        confidence) and fails the filter for any other source, as does a NaN score.
    statuses
        Keep rows whose ``status`` is one of these (None: every status).
    categories
        Keep rows without a category or with one of these (None: every category): e.g. the
        COCO classes without the ``face`` labels of a face detector.
    quarantine, include_quarantined
        With ``include_quarantined``, the label rows of ``quarantine`` (``QUARANTINE_SCHEMA``)
        are added back before filtering: those of ``record_kind`` ``"label"`` whose ``record``
        is a label-store row (a JSON object with ``label_id``, ``image_id``, ``annotation_type``
        and ``task``, coercible with ``frame("labels", ...)``). A raw source record (a COCO
        annotation that never became a row) is not one. A label id already in ``labels`` is not
        added again, and of a label quarantined twice the first row is used.

    Raises ``ValueError`` for ``include_quarantined`` without a ``quarantine`` and for a
    status that does not exist.
    """
    check_schema(labels, "labels")
    chosen, restored = labels, pl.Series("label_id", [], pl.String)
    if include_quarantined:
        if quarantine is None:
            raise ValueError("include_quarantined needs the quarantine frame")
        back = (
            _quarantined_labels(check_schema(quarantine, "quarantine"))
            .filter(pl.col("label_id").is_in(labels["label_id"].implode()).not_())
            .unique("label_id", keep="first", maintain_order=True)
        )
        chosen, restored = pl.concat([labels, back]), back["label_id"]
    if min_score is not None:
        score = (
            pl.when(pl.col("score").is_null() & pl.col("source").str.starts_with(HUMAN_SOURCE))
            .then(1.0)
            .otherwise(pl.col("score").fill_nan(None))
        )
        # a null comparison (no score, no human source) drops the row
        chosen = chosen.filter(score >= min_score)
    if statuses is not None:
        statuses = list(statuses)
        unknown = sorted(set(statuses) - set(LABEL_STATUSES))
        if unknown:
            raise ValueError(f"unknown statuses {unknown}; known: {list(LABEL_STATUSES)}")
        chosen = chosen.filter(pl.col("status").is_in(statuses))
    if categories is not None:
        chosen = chosen.filter(pl.col("category").is_null() | pl.col("category").is_in(list(categories)))
    # a machine box linked to a person's object box is a conflict (relabel.merge: it landed on
    # that object with another category): the object goes out once, as the person named it
    by_person = pl.col("source").fill_null("").str.starts_with(HUMAN_SOURCE)
    person_objects = labels.filter(by_person, pl.col("task") == "object")["label_id"]
    in_conflict = (
        ~by_person & (pl.col("task") == "object") & pl.col("linked_label_id").is_in(person_objects.implode())
    ).fill_null(False)
    conflicting = chosen.filter(in_conflict)["label_id"].sort()
    chosen = chosen.filter(~in_conflict).sort("label_id")
    from_quarantine = chosen.filter(pl.col("label_id").is_in(restored.implode()))["label_id"]
    return Selection(
        labels=chosen,
        from_quarantine=tuple(from_quarantine.to_list()),
        in_conflict=tuple(conflicting.to_list()),
    )


# what a quarantine record needs to be a label-store row rather than a raw source record
_LABEL_KEYS = ("label_id", "image_id", "annotation_type", "task")


def _quarantined_labels(quarantine: pl.DataFrame) -> pl.DataFrame:
    """The label rows held in the records of ``quarantine``'s label entries, in order."""
    rows = []
    for record in quarantine.filter(pl.col("record_kind") == "label")["record"]:
        try:
            row = json.loads(record)
        except (TypeError, json.JSONDecodeError):
            continue
        if not (isinstance(row, dict) and all(row.get(key) for key in _LABEL_KEYS)):
            continue
        try:
            # one row at a time: a record that does not fit the schema is skipped, not fatal
            rows.append(frame("labels", [row]))
        except SchemaError:
            continue
    return pl.concat([frame("labels", []), *rows])


# ----------------------------------------------------------------------------- the formats


def write_coco(images: pl.DataFrame, labels: pl.DataFrame, folder: Path, data_dir: Path) -> list[Path]:
    """COCO ``instances.json``, ``captions.json`` and ``detailed_captions.json`` in ``folder``.

    Every file lists every image: ``id`` (1..N in ``image_id`` order), ``file_name`` (the
    absolute path of the image file), ``width``, ``height`` and ``relabel_image_id``.
    ``instances.json`` has ``categories`` (ids 1..N in name order) and one annotation per
    ``object`` row with a box: ``bbox`` ``[x, y, w, h]``, ``segmentation`` (the crowd RLE of
    ``mask_rle`` for a crowd region, else the polygon rings, else ``[]``), ``area`` (of the
    mask as COCO rasterises it; of the box without one), ``iscrowd``, and the extra keys
    ``score``, ``source`` and ``label_id``. The caption files hold the ``brief_caption`` and
    ``detailed_caption`` rows, with the same extra keys. Annotation ids are 1..N per file.
    """
    images, labels = prepare(images, labels, data_dir, "coco")
    size = {row[0]: row[1:] for row in images.select("image_id", "width", "height").iter_rows()}
    coco_id = {image_id: number for number, image_id in enumerate(images["image_id"], start=1)}
    entries = [
        {
            "id": coco_id[row["image_id"]],
            "file_name": row["path"],
            "width": row["width"],
            "height": row["height"],
            "relabel_image_id": row["image_id"],
        }
        for row in images.iter_rows(named=True)
    ]
    objects = labels.filter(pl.col("task") == "object").with_columns(_category=_CATEGORY)
    names = sorted(set(objects["_category"].to_list()))
    category_id = {name: number for number, name in enumerate(names, start=1)}
    annotations = []
    for number, row in enumerate(objects.iter_rows(named=True), start=1):
        x0, y0, x1, y1 = row["box"]
        segmentation = _coco_segmentation(row)
        annotations.append(
            {
                "id": number,  # COCOeval reads an id of 0 as no match: ids start at 1
                "image_id": coco_id[row["image_id"]],
                "category_id": category_id[row["_category"]],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "segmentation": segmentation,
                "area": _coco_area(segmentation, row["box"], *size[row["image_id"]]),
                "iscrowd": int(bool(row["is_crowd"])),
                **_extras(row),
            }
        )
    instances = {
        **_coco_header(entries),
        "categories": [{"id": number, "name": name} for name, number in category_id.items()],
        "annotations": annotations,
    }
    written = [_write_json(folder / "instances.json", instances)]
    for file_name, task in COCO_CAPTION_FILES.items():
        captions = labels.filter(pl.col("task") == task)
        document = {
            **_coco_header(entries),
            "annotations": [
                {
                    "id": number,
                    "image_id": coco_id[row["image_id"]],
                    "caption": row["text"],
                    **_extras(row),
                }
                for number, row in enumerate(captions.iter_rows(named=True), start=1)
            ],
        }
        written.append(_write_json(folder / file_name, document))
    return sorted(written)


def write_hf_parquet(
    images: pl.DataFrame,
    labels: pl.DataFrame,
    folder: Path,
    data_dir: Path,
    *,
    embed_images: bool = False,
) -> list[Path]:
    """``images.parquet`` and ``labels.parquet`` in ``folder``: the label store, lossless.

    The tables have the label store's columns, in its order, sorted by ``image_id`` and
    ``label_id``; ``uri`` is the absolute path of the image file. Enum columns are written as
    strings and fixed-size arrays (``box``, ``quad``) as lists, which every parquet reader,
    ``datasets`` included, takes (``datasets`` cannot read a fixed-size array with nulls);
    relabel's ``parquet`` source casts them back to the schema.

    With ``embed_images`` the image files' bytes go into ``image_bytes.parquet`` (``image_id``,
    ``image``: ``{"bytes", "path"}`` with the file's name as ``path``, tagged as a Hugging Face
    ``Image`` feature so ``datasets`` decodes it). It is a file of its own, not a column of
    ``images.parquet``: the parquet source checks that table's columns exactly, so nothing the
    schema does not know slips in unnoticed.
    """
    images, labels = prepare(images, labels, data_dir, "hf-parquet")
    written = [
        _write_parquet(folder / "images.parquet", images.with_columns(uri=pl.col("path")).drop("path")),
        _write_parquet(folder / "labels.parquet", labels),
    ]
    if embed_images:
        written.append(_write_image_bytes(folder / "image_bytes.parquet", images))
    return sorted(written)


def write_yolo(images: pl.DataFrame, labels: pl.DataFrame, folder: Path, data_dir: Path) -> list[Path]:
    """A YOLO detection dataset in ``folder``, in the layout Ultralytics reads.

    ``images/<stem><suffix>``
        a symbolic link to each image file (absolute target); ``<stem>`` is the first 16 hex
        digits of the image id, so two files of the same name stay apart. Ultralytics finds an
        image's labels by swapping ``images`` for ``labels`` in its path, hence the links.
    ``labels/<stem>.txt``
        one line per object box: ``class cx cy w h``, the box centre and size divided by the
        image's width and height, 6 decimals; crowd regions are left out (``WRITTEN``). An
        image without objects gets an empty file (a background image).
    ``images.txt``, ``train.txt``, ``val.txt``
        the images (all; the train split, with any image that has no split; the eval split),
        one ``./images/<stem><suffix>`` a line (Ultralytics reads ``./`` as the list's folder).
    ``data.yaml``
        ``names`` (class index -> category, categories in name order), ``nc``, and
        ``train: train.txt``, ``val: val.txt``; it has no ``path``, so the folder it lies in is
        the dataset root.
    """
    images, labels = prepare(images, labels, data_dir, "yolo")
    stems = [image_id[:16] for image_id in images["image_id"]]
    if len(set(stems)) != len(stems):
        raise ValueError("two image ids share their first 16 hex digits: YOLO file stems collide")
    objects = labels.with_columns(_category=_CATEGORY)
    names = sorted(set(objects["_category"].to_list()))
    class_of = {name: index for index, name in enumerate(names)}
    by_image = objects.partition_by("image_id", as_dict=True, maintain_order=True)
    written: list[Path] = []
    lists: dict[str, list[str]] = {"images.txt": [], "train.txt": [], "val.txt": []}
    for stem, image in zip(stems, images.iter_rows(named=True), strict=True):
        link = folder / "images" / f"{stem}{Path(image['path']).suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)  # symlink_to does not replace a link left by an earlier write
        link.symlink_to(image["path"])
        written.append(link)
        boxes = by_image.get((image["image_id"],), objects.clear())
        lines = [
            _yolo_line(class_of[name], box, image["width"], image["height"])
            for name, box in boxes.select("_category", "box").iter_rows()
        ]
        written.append(write_text(folder / "labels" / f"{stem}.txt", "".join(lines)))
        entry = f"./images/{link.name}\n"
        lists["images.txt"].append(entry)
        lists["val.txt" if image["split"] == "eval" else "train.txt"].append(entry)
    written += [write_text(folder / name, "".join(entries)) for name, entries in lists.items()]
    data = {
        "names": dict(enumerate(names)),
        "nc": len(names),
        "train": "train.txt",
        "val": "val.txt",
    }
    written.append(write_text(folder / "data.yaml", yaml.safe_dump(data, sort_keys=True, allow_unicode=True)))
    return sorted(written)


Writer = Callable[..., list[Path]]

# the formats written from the label store alone; florence2 needs the task serialisation of
# ``models`` (``models.corpus.write_florence2_jsonl``), which the export asset adds
FORMATS: dict[str, Writer] = {
    "coco": write_coco,
    "hf-parquet": write_hf_parquet,
    "yolo": write_yolo,
}


@dataclass(frozen=True)
class ExportResult:
    """What ``export_labels`` wrote.

    ``files`` are the paths written, relative to ``folder`` (POSIX form), sorted; ``images``
    counts the images exported and ``labels`` the label rows by task that the format holds
    (``WRITTEN``), of those images.
    """

    format: str
    folder: Path
    files: tuple[str, ...]
    images: int
    labels: dict[str, int]


def export_labels(
    fmt: str,
    images: pl.DataFrame,
    labels: pl.DataFrame,
    folder: Path,
    data_dir: Path,
    writers: Mapping[str, Writer] = FORMATS,
    **options: Any,
) -> ExportResult:
    """Write ``images`` and ``labels`` in format ``fmt`` (a key of ``writers``) into ``folder``.

    ``folder`` is deleted and made anew first, so it holds this export only; it must not hold
    the data directory. ``options`` go to the writer (``embed_images`` of ``hf-parquet``).
    """
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; known: {sorted(writers)}")
    folder = Path(folder)
    # the folder is deleted: refuse one that holds the very images being exported
    if Path(os.path.abspath(data_dir)).is_relative_to(os.path.abspath(folder)):
        raise ValueError(f"export folder {folder} holds the data directory {data_dir}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    written = writers[fmt](images, labels, folder, data_dir, **options)
    exported_images, exported_labels = prepare(images, labels, data_dir, fmt)
    by_task = exported_labels.group_by(pl.col("task").cast(pl.String)).len().sort("task")
    return ExportResult(
        format=fmt,
        folder=folder,
        files=tuple(sorted(path.relative_to(folder).as_posix() for path in written)),
        images=exported_images.height,
        labels=dict(by_task.iter_rows()),
    )


# ----------------------------------------------------------------------------- helpers


def prepare(
    images: pl.DataFrame, labels: pl.DataFrame, data_dir: Path, fmt: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The images sorted by id, with ``path`` (the absolute path of the file), and the labels
    of them that ``fmt`` writes (``WRITTEN``), sorted by image id, then label id."""
    check_schema(images, "images")
    check_schema(labels, "labels")
    if images["image_id"].n_unique() != images.height:
        raise ValueError("images has repeated image ids")
    images = images.sort("image_id")
    images = images.with_columns(
        path=pl.Series([absolute_path(uri, data_dir) for uri in images["uri"]], dtype=pl.String)
    )
    labels = labels.filter(pl.col("image_id").is_in(images["image_id"].implode()), WRITTEN[fmt]).sort(
        "image_id", "label_id"
    )
    return images, labels


def absolute_path(uri: str, data_dir: Path) -> str:
    # abspath, not resolve: a linked file keeps the name it was ingested by
    return Path(os.path.abspath(path_of_uri(uri, data_dir))).as_posix()


def _extras(row: dict[str, Any]) -> dict[str, Any]:
    # relabel's own keys on a COCO annotation: where it came from, how sure it is, and who
    # confirmed it (one annotation per object: the labels folded into it are its provenance)
    return {
        "score": row["score"],
        "source": row["source"],
        "label_id": row["label_id"],
        "agreement": row.get("agreement"),
        "provenance": list(row.get("provenance") or []),
    }


def _coco_header(entries: list[dict[str, Any]]) -> dict[str, Any]:
    # no date or version: the same labels must give the same bytes
    return {"info": {"description": "exported by relabel"}, "licenses": [], "images": entries}


def _coco_segmentation(row: dict[str, Any]) -> dict[str, Any] | list[list[float]]:
    if row["mask_rle"] and (row["is_crowd"] or not row["polygon"]):
        return json.loads(row["mask_rle"])
    return row["polygon"] or []


def _coco_area(
    segmentation: dict[str, Any] | list[list[float]], box: list[float], width: int, height: int
) -> float:
    """The area COCO gives a region: its mask's pixel count, or the box's area without one."""
    if isinstance(segmentation, dict):
        rle_height, rle_width = segmentation["size"]
        if isinstance(segmentation["counts"], list):  # uncompressed RLE, as COCO stores crowds
            return float(mask.area(mask.frPyObjects(segmentation, rle_height, rle_width)))
        return float(mask.area({**segmentation, "counts": segmentation["counts"].encode()}))
    if segmentation:
        return float(mask.area(rasterise(segmentation, width, height)))
    return (box[2] - box[0]) * (box[3] - box[1])


def _yolo_line(class_index: int, box: list[float], width: int, height: int) -> str:
    x0, y0, x1, y1 = box
    values = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
    return f"{class_index} " + " ".join(f"{value:.6f}" for value in values) + "\n"


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    text = json.dumps(document, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return write_text(path, text + "\n")


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # bytes, not text mode: no platform newline translation
    path.write_bytes(text.encode("utf-8"))
    return path


def _write_parquet(path: Path, data: pl.DataFrame) -> Path:
    portable = data.with_columns(
        pl.col(name).cast(pl.String if isinstance(dtype, pl.Enum) else pl.List(dtype.inner))
        for name, dtype in data.schema.items()
        if isinstance(dtype, (pl.Enum, pl.Array))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    portable.write_parquet(path, **_PARQUET)
    return path


# the Hugging Face features of image_bytes.parquet, as ``datasets`` stores them in a parquet
# schema's "huggingface" metadata (written by hand: relabel does not depend on ``datasets``)
_IMAGE_BYTES_FEATURES = {
    "info": {
        "features": {
            "image_id": {"_type": "Value", "dtype": "string"},
            "image": {"_type": "Image"},
        }
    }
}
# the arrow type of a ``datasets.Image`` column; ``datasets`` uses the metadata's features
# only where the column has exactly this type
_HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _write_image_bytes(path: Path, images: pl.DataFrame) -> Path:
    table = pa.table(
        {
            "image_id": pa.array(images["image_id"].to_list(), pa.string()),
            "image": pa.array(
                [
                    {"bytes": Path(image_path).read_bytes(), "path": Path(image_path).name}
                    for image_path in images["path"]
                ],
                _HF_IMAGE,
            ),
        }
    ).replace_schema_metadata({"huggingface": json.dumps(_IMAGE_BYTES_FEATURES, sort_keys=True)})
    # pyarrow, not polars: polars writes its own arrow schema, which drops the metadata
    pq.write_table(table, path, compression="zstd", write_statistics=False)
    return path


__all__ = [
    "COCO_CAPTION_FILES",
    "FORMATS",
    "WRITTEN",
    "ExportResult",
    "Selection",
    "export_labels",
    "select_labels",
    "write_coco",
    "absolute_path",
    "prepare",
    "write_text",
    "write_hf_parquet",
    "write_yolo",
]
