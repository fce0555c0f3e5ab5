"""Drawing labels over images, and contact sheets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from relabel.labels import empty, frame
from relabel.preview import contact_sheet, draw_labels


def _labels():
    common = {"image_id": "x", "source": "human", "score": 1.0, "iteration": 0, "status": "raw"}
    return frame(
        "labels",
        [
            {
                **common,
                "label_id": "1",
                "annotation_type": "region_text",
                "task": "object",
                "region_kind": "object",
                "box": [10.0, 20.0, 60.0, 70.0],
                "polygon": [[10.0, 20.0, 60.0, 20.0, 35.0, 70.0]],
                "category": "kite",
                "text": "kite",
            },
            {
                **common,
                "label_id": "2",
                "annotation_type": "region_text",
                "task": "ocr",
                "region_kind": "text",
                "quad": [80.0, 10.0, 140.0, 20.0, 136.0, 40.0, 76.0, 30.0],
                "box": [76.0, 10.0, 140.0, 40.0],
                "text": "OPEN",
            },
            {
                **common,
                "label_id": "3",
                "annotation_type": "text_phrase_region",
                "task": "phrase_grounding",
                "text": "A red kite flies.",
                "phrase_start": 0,
                "phrase_end": 10,
                "box": [12.0, 22.0, 58.0, 68.0],
                "score": 0.5,
            },
            {
                **common,
                "label_id": "4",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "A red kite flies over a sign that says OPEN.",
            },
        ],
    )


def test_draw_labels_marks_regions_and_writes_captions_below():
    image = Image.new("RGB", (160, 120), (128, 128, 128))
    drawn = draw_labels(image, _labels())
    assert drawn.width == 160 and drawn.height > 120  # a band for the caption
    before = np.asarray(image, dtype=np.int32)
    after = np.asarray(drawn, dtype=np.int32)[:120]
    changed = np.abs(after - before).sum(axis=2) > 0
    assert changed[20:70, 10:60].any() and changed[10:40, 76:140].any()
    assert not changed[100:, :].any(), "nothing drawn where there is no label"
    assert (np.asarray(image) == 128).all(), "the input image is left alone"


def test_draw_labels_without_labels_keeps_the_picture():
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    drawn = draw_labels(image, empty("labels"))
    assert drawn.size == image.size and np.array_equal(np.asarray(drawn), np.asarray(image))


def test_contact_sheet_lays_images_out_in_a_grid():
    images = [Image.new("RGB", (40, 30), (i * 40, 0, 0)) for i in range(5)]
    sheet = contact_sheet(images, columns=2)
    assert sheet.width >= 2 * 40 and sheet.height >= 3 * 30
    assert sheet.getpixel((sheet.width - 10, sheet.height - 10)) != (160, 0, 0)  # empty last cell
    with pytest.raises(ValueError):
        contact_sheet([])
