"""Running one specialist over a shard's images, losing nothing.

The runner batches the images, gives each batch the labels already known for it, and turns
what the specialist returns into label-store rows (ids, ``source`` = ``name@version``,
iteration, status). It never lets one image take the shard down:

- a batch that raises is retried image by image; an image that fails alone becomes a
  quarantine row (``specialist_failed``) and the rest of the shard goes on;
- an image whose output does not fit the label schema is quarantined (``malformed_output``);
- labels that fail the geometry and value checks shared with ingest (box outside the image,
  zero area, NaN score, ...) are quarantined with that check's reason.

So for every image: its labels are kept, or its failure is in quarantine with the reason.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
from tqdm import tqdm

from models.specialists.base import ImageRef, LabelRow, Specialist, source_of
from relabel.ingest import validate_labels
from relabel.labels import SchemaError, empty, frame, label_id_for, quarantine_row

PHASE = "annotate"


@dataclass(frozen=True)
class SpecialistRun:
    """What one specialist produced for a set of images."""

    source: str
    labels: pl.DataFrame
    quarantine: pl.DataFrame
    images_in: int
    images_failed: int
    seconds: float

    @property
    def seconds_per_100_images(self) -> float:
        return 100 * self.seconds / max(self.images_in, 1)


def image_refs(images: pl.DataFrame, resolve_uri) -> list[ImageRef]:  # noqa: ANN001 - uri -> Path
    """The images of an images-table frame as ``ImageRef``s, their files found by ``resolve_uri``."""
    return [
        ImageRef(row["image_id"], resolve_uri(row["uri"]), row["width"], row["height"])
        for row in images.select("image_id", "uri", "width", "height").iter_rows(named=True)
    ]


def run_specialist(
    specialist: Specialist,
    images: Sequence[ImageRef],
    known: pl.DataFrame | None = None,
    *,
    batch_size: int = 8,
    iteration: int = 0,
    progress: bool = True,
    desc: str | None = None,
) -> SpecialistRun:
    """Label ``images`` with ``specialist`` in batches of ``batch_size``.

    ``known`` (label-store schema) holds the labels already known for these images; each
    batch sees only its own images' rows. Returns the kept labels and the quarantine.
    """
    source = source_of(specialist)
    known = empty("labels") if known is None else known
    started = time.perf_counter()
    kept: list[pl.DataFrame] = [empty("labels")]
    quarantined: list[dict] = []
    failed = 0
    batches = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
    for batch in tqdm(batches, desc=desc or source, unit="batch", disable=not progress):
        for image, output in zip(batch, _annotate_batch(specialist, batch, known), strict=True):
            if isinstance(output, BaseException):
                failed += 1
                quarantined.append(_failure(source, image, "specialist_failed", output))
                continue
            try:
                kept.append(frame("labels", _label_rows(output, image, source, iteration)))
            except (SchemaError, TypeError, ValueError, KeyError) as error:
                failed += 1
                quarantined.append(_failure(source, image, "malformed_output", error))
    labels = pl.concat(kept, how="vertical")
    sizes = frame(
        "images",
        [{"image_id": i.image_id, "uri": str(i.path), "width": i.width, "height": i.height} for i in images],
    )
    labels, invalid = validate_labels(labels, sizes, phase=PHASE)
    quarantine = pl.concat([frame("quarantine", quarantined), invalid], how="vertical")
    return SpecialistRun(
        source=source,
        labels=labels,
        quarantine=quarantine,
        images_in=len(images),
        images_failed=failed,
        seconds=time.perf_counter() - started,
    )


def _annotate_batch(
    specialist: Specialist, batch: Sequence[ImageRef], known: pl.DataFrame
) -> list[list[LabelRow] | BaseException]:
    """The specialist's rows for each image of the batch, or the error it raised on that image."""
    try:
        outputs = specialist.annotate(batch, _known_for(known, batch))
        if len(outputs) != len(batch):
            raise ValueError(f"returned {len(outputs)} outputs for {len(batch)} images")
        return list(outputs)
    except Exception:  # noqa: BLE001 - retried one by one below, so only the culprit fails
        if len(batch) == 1:
            return [_single(specialist, batch[0], known)]
        return [_single(specialist, image, known) for image in batch]


def _single(specialist: Specialist, image: ImageRef, known: pl.DataFrame) -> list[LabelRow] | BaseException:
    try:
        (output,) = specialist.annotate([image], _known_for(known, [image]))
        return output
    except Exception as error:  # noqa: BLE001 - becomes a quarantine row with the error
        return error


def _known_for(known: pl.DataFrame, batch: Sequence[ImageRef]) -> pl.DataFrame:
    return known.filter(pl.col("image_id").is_in([image.image_id for image in batch]))


def _label_rows(output: list[LabelRow], image: ImageRef, source: str, iteration: int) -> list[LabelRow]:
    rows = []
    for ordinal, row in enumerate(output):
        full = {**row, "image_id": image.image_id, "source": source, "iteration": iteration, "status": "raw"}
        full["label_id"] = label_id_for(full, ordinal)
        rows.append(full)
    return rows


def _failure(source: str, image: ImageRef, reason: str, error: BaseException) -> dict:
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return quarantine_row(
        record_kind="image",
        phase=PHASE,
        reason=reason,
        detail=f"{source} on {image.path.name}: {type(error).__name__}: {error}{where}",
        record={"image_id": image.image_id, "path": str(image.path), "specialist": source},
        image_id=image.image_id,
    )
