"""The specialist interface: what every initial-annotation model looks like to the engine.

A specialist has a ``name``, a ``version`` and the annotation types it produces, and labels a
batch of images at a time. It returns plain label rows (dicts with the label-store columns it
knows: annotation_type, task, text, region_kind, box, quad, polygon, category, score, ...);
the runner (``models.specialists.runner``) fills in ids, source, iteration and status, checks
the schema and turns an image that makes the specialist fail into a quarantine row.

Language specialists (captioner, grounding, region enrichment, segmentation of given
regions) also read the labels already known for the batch's images: ``known`` holds them
(human labels and the fused regions of the perception specialists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl

LabelRow = dict[str, Any]


@dataclass(frozen=True)
class ImageRef:
    """One image to annotate: its id, the file to read and its size in pixels."""

    image_id: str
    path: Path
    width: int
    height: int


@runtime_checkable
class Specialist(Protocol):
    """A model that labels images for some annotation types."""

    name: str
    version: str
    annotation_types: tuple[str, ...]

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """Label rows for each image of ``images``, in the same order.

        ``known`` holds the labels already known for these images (label-store schema);
        perception specialists ignore it. Raising means the whole batch failed: the runner
        then retries image by image and quarantines only the images that fail alone.
        """
        ...


def source_of(specialist: Specialist) -> str:
    """The ``source`` written on a specialist's labels: ``name@version``."""
    return f"{specialist.name}@{specialist.version}"
