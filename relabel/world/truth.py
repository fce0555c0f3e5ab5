"""Ground-truth label rows of a scene, in the label store's schema.

Every row is ``audited`` with score 1: it is what the world drew, not what anyone guessed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl

from relabel.labels import check_schema, frame, label_id_for
from relabel.world.captions import Caption, region_caption
from relabel.world.scene import Scene


def truth_rows(scene: Scene, captions: list[Caption], source: str) -> list[dict[str, Any]]:
    """All ground-truth label rows of one scene (without ``label_id``): its captions, an
    ``object`` and a ``region_caption`` row per object, an ``ocr`` row per written line and a
    ``phrase_grounding`` row per (grounded phrase, referred object)."""
    common = {
        "image_id": scene.image_id,
        "score": 1.0,
        "source": source,
        "iteration": 0,
        "status": "audited",
        "is_crowd": False,
    }
    rows: list[dict[str, Any]] = []
    for caption in captions:
        rows.append({**common, "annotation_type": "text", "task": caption.task, "text": caption.text})
    for obj in scene.objects:
        region = {
            **common,
            "annotation_type": "region_text",
            "region_kind": "object",
            "box": [float(v) for v in obj.box],
            "polygon": obj.polygon,
            "category": obj.category,
        }
        rows.append({**region, "task": "object", "text": obj.category})
        rows.append({**region, "task": "region_caption", "text": region_caption(obj, scene)})
    for sign in scene.signs:
        for line in sign.lines:
            rows.append(
                {
                    **common,
                    "annotation_type": "region_text",
                    "task": "ocr",
                    "region_kind": "text",
                    "text": line.text,
                    "quad": list(line.quad),
                    "box": [round(v, 2) for v in line.box],
                }
            )
    by_index = {obj.index: obj for obj in scene.objects}
    for caption in captions:
        for phrase in caption.phrases:
            for index in phrase.objects:
                obj = by_index[index]
                rows.append(
                    {
                        **common,
                        "annotation_type": "text_phrase_region",
                        "task": "phrase_grounding",
                        "text": caption.text,
                        "phrase_start": phrase.start,
                        "phrase_end": phrase.end,
                        "region_kind": "object",
                        "box": [float(v) for v in obj.box],
                        "polygon": obj.polygon,
                        "category": obj.category,
                    }
                )
    return rows


def labels_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The rows as a checked labels frame, each with its stable ``label_id`` (an ordinal
    tells apart rows that would otherwise be identical)."""
    seen: Counter[str] = Counter()
    identified = []
    for row in rows:
        first = label_id_for(row)
        identified.append({**row, "label_id": label_id_for(row, seen[first])})
        seen[first] += 1
    return check_schema(frame("labels", identified), "labels")
