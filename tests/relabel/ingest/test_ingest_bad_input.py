"""Bad input of real collections becomes quarantine rows with a reason, never a traceback that
stops every source nor a silent accept: decompression bombs, duplicate annotation ids, texts
far too long for a caption and sidecar lines with the wrong keys.

Every test runs the real catalog and every shard over inputs built in ``tmp_path`` and checks
that records in == kept + quarantined, for images and for labels.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from PIL import Image

from relabel.config import SourceParams
from relabel.ingest.coco import MAX_TEXT_CHARS
from relabel.ingest.images import decode_image
from tests.relabel.ingest.test_ingest_defects import Ingested, ingest

# 20000 x 20000: over twice PIL's default limit (89,478,485 pixels), where PIL raises
BOMB_SIZE = (20_000, 20_000)
# 10000 x 10000: between once and twice the limit, where PIL only warns
WARNING_SIZE = (10_000, 10_000)


def png_bytes(shade: int, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, (shade * 7) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def write_png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(shade))


def write_png_declaring(path: Path, size: tuple[int, int], shade: int = 0) -> None:
    """A tiny real PNG whose header declares ``size``: what a decompression bomb looks like to
    a reader before it decodes (the header's checksum is fixed, so the header itself is valid)."""
    data = bytearray(png_bytes(shade, (8, 8)))
    # 8-byte signature, then the IHDR chunk: 4-byte length, b"IHDR", width, height (big-endian)
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, *size)
    # the chunk's CRC covers its type and its 13 bytes of data
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def write_lines(path: Path, entries: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))


def folder_source(name: str = "web", sidecar: str = "alt.jsonl") -> SourceParams:
    return SourceParams(name=name, kind="folder", images=name, sidecar=f"{name}/{sidecar}")


def coco_source(
    root: Path, files: list[str], annotations: list[Any], captions: list[Any] | None = None
) -> SourceParams:
    """A COCO source under root/data/coco: one image file per name (COCO ids 1, 2, ...)."""
    folder = root / "data" / "coco"
    images = []
    for number, file_name in enumerate(files, start=1):
        write_png(folder / "images" / file_name, 100 + number)
        images.append({"id": number, "file_name": file_name, "width": 40, "height": 30})
    categories = [{"id": 1, "name": "cat"}]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(instances))
    if captions is not None:
        (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    return SourceParams(
        name="coco",
        kind="coco",
        images="data/coco/images",
        instances="data/coco/instances.json",
        captions="data/coco/captions.json" if captions is not None else None,
    )


def box(annotation_id: int, image_id: int, bbox: list[float]) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": image_id, "category_id": 1, "bbox": bbox}


def caption(annotation_id: int, image_id: int, text: str) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": image_id, "caption": text}


def quarantined(result: Ingested, reason: str) -> list[dict[str, Any]]:
    return result.quarantine.filter(pl.col("reason") == reason).to_dicts()


def test_decompression_bombs_lose_only_themselves_and_their_labels(tmp_path: Path) -> None:
    web = tmp_path / "web"
    write_png(web / "good.png", 1)
    write_png_declaring(web / "bomb.png", BOMB_SIZE)
    write_png_declaring(web / "warns.png", WARNING_SIZE, shade=1)
    write_lines(
        web / "alt.jsonl",
        [
            {"file_name": "good.png", "alt_text": "a square"},
            {"file_name": "bomb.png", "alt_text": "a huge picture"},
            {"file_name": "warns.png", "alt_text": "a large picture"},
        ],
    )
    # a second source after the bombs: it is still catalogued and ingested
    coco = coco_source(tmp_path, ["a.png"], [box(1, 1, [1, 1, 5, 5])])

    result = ingest([folder_source(), coco], tmp_path)

    assert result.accounting() == {"image": (4, 2, 2), "label": (4, 2, 2)}
    assert result.reasons() == {
        ("image", "decompression_bomb"): 2,
        ("label", "image_quarantined"): 2,
    }
    details = {
        json.loads(row["record"])["file"]: row["detail"] for row in quarantined(result, "decompression_bomb")
    }
    assert set(details) == {"web/bomb.png", "web/warns.png"}
    limit = str(Image.MAX_IMAGE_PIXELS)
    assert str(BOMB_SIZE[0] * BOMB_SIZE[1]) in details["web/bomb.png"]
    assert str(WARNING_SIZE[0] * WARNING_SIZE[1]) in details["web/warns.png"]
    assert all(limit in detail for detail in details.values())
    # the labels of a refused image say why, and keep their record
    orphans = quarantined(result, "image_quarantined")
    assert sorted(json.loads(row["record"])["alt_text"] for row in orphans) == [
        "a huge picture",
        "a large picture",
    ]
    assert all("MAX_IMAGE_PIXELS" in row["detail"] for row in orphans)
    assert sorted(result.labels["text"]) == ["a square", "cat"]


@pytest.mark.parametrize("action", ["ignore", "error", "default"])
def test_an_image_between_once_and_twice_the_limit_is_refused_whatever_the_warning_filters(
    tmp_path: Path, action: str
) -> None:
    # PIL only warns for it: ignored, the image would be decoded; as an error, ingest would stop
    write_png(tmp_path / "web" / "good.png", 1)
    write_png_declaring(tmp_path / "web" / "warns.png", WARNING_SIZE)
    write_lines(tmp_path / "web" / "alt.jsonl", [{"file_name": "warns.png", "alt_text": "big"}])

    with warnings.catch_warnings():
        warnings.simplefilter(action)
        filters = list(warnings.filters)
        result = ingest([folder_source()], tmp_path)
        assert warnings.filters == filters  # the process's filters are left as they were

    assert result.accounting() == {"image": (2, 1, 1), "label": (1, 0, 1)}
    assert result.reasons() == {
        ("image", "decompression_bomb"): 1,
        ("label", "image_quarantined"): 1,
    }


@pytest.mark.parametrize("size", [BOMB_SIZE, WARNING_SIZE])
def test_decoding_a_shard_image_refuses_a_bomb(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "bomb.png"
    write_png_declaring(path, size)

    problem = decode_image(path, hashlib.sha256(path.read_bytes()).hexdigest())

    assert problem.reason == "decompression_bomb"
    assert f"{size[0] * size[1]} pixels" in problem.detail
    assert str(Image.MAX_IMAGE_PIXELS) in problem.detail


def test_a_duplicate_annotation_id_is_quarantined_and_the_first_kept(tmp_path: Path) -> None:
    source = coco_source(
        tmp_path,
        ["a.png", "b.png"],
        [
            box(1, 1, [1, 1, 5, 5]),
            box(1, 2, [2, 2, 6, 6]),  # id 1 again, on another image
            box(2, 1, [3, 3, 7, 7]),
            box(1, 1, [1, 1, 5, 5]),  # id 1 a third time, the very same box
        ],
        [
            caption(1, 1, "A red square."),  # ids are per file: 1 is free in the captions
            caption(7, 1, "A square."),
            caption(7, 2, "Another square."),
        ],
    )

    result = ingest([source], tmp_path)

    assert result.accounting() == {"image": (2, 2, 0), "label": (7, 4, 3)}
    assert result.reasons() == {("label", "duplicate_annotation_id"): 3}
    rows = quarantined(result, "duplicate_annotation_id")
    by_origin = {row["origin"].rsplit("/", 1)[1]: row for row in rows}
    assert set(by_origin) == {
        "instances.json#annotations[1]",
        "instances.json#annotations[3]",
        "captions.json#annotations[2]",
    }
    assert by_origin["instances.json#annotations[1]"]["detail"] == (
        "annotation id 1 is already used by annotations[0] of instances.json, which is kept"
    )
    assert "annotation id 7" in by_origin["captions.json#annotations[2]"]["detail"]
    assert json.loads(by_origin["instances.json#annotations[1]"]["record"])["bbox"] == [2, 2, 6, 6]
    assert all(row["image_id"] is not None and row["label_id"] for row in rows)
    objects = result.labels.filter(pl.col("task") == "object")
    assert sorted(objects["box"].to_list()) == [[1.0, 1.0, 6.0, 6.0], [3.0, 3.0, 10.0, 10.0]]
    captions = result.labels.filter(pl.col("task") == "brief_caption")
    assert sorted(captions["text"]) == ["A red square.", "A square."]


def test_a_20000_character_caption_or_alt_text_is_quarantined_as_too_long(tmp_path: Path) -> None:
    page = "Lorem ipsum dolor sit amet. " * 1_000
    huge = page[:20_000]
    longest = "x" * MAX_TEXT_CHARS  # at the limit: still a caption
    captions = [caption(1, 1, huge), caption(2, 1, longest), caption(3, 1, "A cat.")]
    coco = coco_source(tmp_path, ["a.png"], [], captions)
    write_png(tmp_path / "web" / "w.png", 9)
    write_lines(
        tmp_path / "web" / "alt.jsonl",
        [{"file_name": "w.png", "alt_text": huge}, {"file_name": "w.png", "alt_text": "a sign"}],
    )

    result = ingest([coco, folder_source()], tmp_path)

    assert result.accounting() == {"image": (2, 2, 0), "label": (5, 3, 2)}
    assert result.reasons() == {("label", "text_too_long"): 2}
    details = sorted(row["detail"] for row in quarantined(result, "text_too_long"))
    assert details == [
        f"alt_text has 20000 characters, more than the limit of {MAX_TEXT_CHARS}",
        f"caption has 20000 characters, more than the limit of {MAX_TEXT_CHARS}",
    ]
    assert all(row["image_id"] is not None for row in quarantined(result, "text_too_long"))
    assert sorted(result.labels["text"]) == ["A cat.", "a sign", longest]


def test_a_sidecar_line_with_a_wrong_key_names_it_and_the_expected_keys(tmp_path: Path) -> None:
    write_png(tmp_path / "web" / "a.png", 1)
    lines = [
        {"file_name": "a.png", "alt_text": "a red sign"},
        {"file_name": "a.png", "alt": "a typo of the key"},
        {"file_name": "a.png", "alt_text": "an extra key", "lang": "en"},
        {"file_name": "a.png"},
    ]
    write_lines(tmp_path / "web" / "alt.jsonl", lines)

    result = ingest([folder_source()], tmp_path)

    assert result.accounting() == {"image": (1, 1, 0), "label": (4, 1, 3)}
    assert result.reasons() == {("label", "unknown_key"): 2, ("label", "missing_key"): 1}
    details = {int(row["origin"].rsplit(":", 1)[1]): row["detail"] for row in result.quarantine.to_dicts()}
    expected = (
        "a sidecar entry has exactly the keys ['file_name', 'alt_text'], "
        'e.g. {"file_name": "shop/sign.jpg", "alt_text": "A red stop sign"}'
    )
    assert details == {
        2: f"unknown key(s) ['alt'] and missing key(s) ['alt_text']; {expected}",
        3: f"unknown key(s) ['lang']; {expected}",
        4: f"missing key(s) ['alt_text']; {expected}",
    }
    assert json.loads(quarantined(result, "missing_key")[0]["record"]) == lines[3]
    assert result.labels["text"].to_list() == ["a red sign"]


def test_a_csv_row_with_cells_beyond_the_header_is_not_silently_cut(tmp_path: Path) -> None:
    write_png(tmp_path / "web" / "a.png", 1)
    # an unquoted comma splits the alt text: "a sign" would be taken and " red" dropped
    (tmp_path / "web" / "alt.csv").write_text('file_name,alt_text\na.png,a sign, red\na.png,"a sign, red"\n')

    result = ingest([folder_source(sidecar="alt.csv")], tmp_path)

    assert result.accounting() == {"image": (1, 1, 0), "label": (2, 1, 1)}
    (row,) = quarantined(result, "unknown_key")
    assert row["detail"].startswith("unknown key(s) ['(cells beyond the header)']")
    assert result.labels["text"].to_list() == ["a sign, red"]
