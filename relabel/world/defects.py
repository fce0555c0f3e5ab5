"""A handful of the defects real collections have, injected into the human and web data.

They exist so that the engine's quarantine has something to catch in the demo: a truncated
PNG, a byte-identical duplicate under another name, a box far outside its image, a box of
zero area, an image entry whose file is missing, and an alt-text line that is not UTF-8.
None of them is in the ground truth.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relabel.world.human import clean_alt_text
from relabel.world.scene import Scene

DEFECT_KINDS = (
    "truncated_image",
    "duplicate_image",
    "box_outside_image",
    "zero_area_box",
    "missing_image_file",
    "invalid_utf8",
)


@dataclass(frozen=True)
class Defect:
    """One injected defect: its kind, the file it is in (relative to the world folder), the
    record inside that file (``annotation:<id>``, ``image:<id>``, ``line:<file_name>``, or
    empty for a whole file) and a readable description."""

    kind: str
    file: str
    description: str
    record: str = ""


def alt_text_line(file_name: str, text: str) -> bytes:
    """One JSONL line of the web collection's alt-text sidecar, UTF-8 encoded."""
    return json.dumps({"file_name": file_name, "alt_text": text}, ensure_ascii=False).encode("utf-8") + b"\n"


def inject_defects(
    rng: np.random.Generator,
    world_dir: Path,
    scenes: list[Scene],
    instances: dict[str, Any],
    alt_lines: dict[str, bytes],
    next_index: int,
) -> list[Defect]:
    """Add the defects to the files on disk, to the COCO ``instances`` document and to the
    alt-text lines (both changed in place); new files are numbered from ``next_index``.

    A defect that needs an image of a collection the world does not have (a tiny world) is
    left out.
    """
    curated = [scene for scene in scenes if scene.collection == "curated"]
    web = [scene for scene in scenes if scene.collection == "web"]
    defects: list[Defect] = []

    source = (web or curated)[0] if scenes else None
    if source is not None:
        name = f"{next_index:05d}.png"
        data = (world_dir / source.file).read_bytes()
        (world_dir / "web" / name).write_bytes(data[: len(data) // 2])
        alt_lines[name] = alt_text_line(name, clean_alt_text(source, rng))
        defects.append(
            Defect(
                "truncated_image",
                f"web/{name}",
                f"PNG cut to {len(data) // 2} of {len(data)} bytes (a download that broke off)",
            )
        )

    if curated:
        original = curated[int(rng.integers(len(curated)))]
        name = f"{next_index + 1:05d}.png"
        shutil.copyfile(world_dir / original.file, world_dir / "web" / name)
        alt_lines[name] = alt_text_line(name, clean_alt_text(original, rng))
        defects.append(
            Defect(
                "duplicate_image",
                f"web/{name}",
                f"byte-identical copy of {original.file} under another name",
            )
        )

        target = instances["images"][int(rng.integers(len(curated)))]
        next_id = max((a["id"] for a in instances["annotations"]), default=0) + 1
        far = [float(target["width"] + 150), float(target["height"] + 100), 40.0, 30.0]
        instances["annotations"].append(
            {
                "id": next_id,
                "image_id": target["id"],
                "category_id": 1,
                "bbox": far,
                "area": 1200.0,
                "iscrowd": 0,
            }
        )
        defects.append(
            Defect(
                "box_outside_image",
                "human/instances.json",
                f"annotation {next_id} on {target['file_name']} has bbox {far}, far outside "
                f"the {target['width']}x{target['height']} image",
                f"annotation:{next_id}",
            )
        )
        flat = [float(target["width"] // 3), float(target["height"] // 3), 0.0, 25.0]
        instances["annotations"].append(
            {
                "id": next_id + 1,
                "image_id": target["id"],
                "category_id": 2,
                "bbox": flat,
                "area": 0.0,
                "iscrowd": 0,
            }
        )
        defects.append(
            Defect(
                "zero_area_box",
                "human/instances.json",
                f"annotation {next_id + 1} on {target['file_name']} has bbox {flat} of zero width",
                f"annotation:{next_id + 1}",
            )
        )

        missing_id = max(image["id"] for image in instances["images"]) + 1
        name = f"{next_index + 2:05d}.png"
        instances["images"].append(
            {
                "id": missing_id,
                "file_name": name,
                "width": target["width"],
                "height": target["height"],
            }
        )
        defects.append(
            Defect(
                "missing_image_file",
                f"images/{name}",
                f"COCO image {missing_id} names {name}, which is not in images/",
                f"image:{missing_id}",
            )
        )

    if web:
        scene = web[int(rng.integers(len(web)))]
        name = Path(scene.file).name
        # Latin-1 bytes where UTF-8 was promised, as an old CMS would write them
        alt_lines[name] = (
            b'{"file_name": "' + name.encode("ascii") + b'", "alt_text": "Caf\xe9 terrace with a view"}\n'
        )
        defects.append(
            Defect(
                "invalid_utf8",
                "web/alt_text.jsonl",
                f"the alt-text line of {name} holds the Latin-1 byte 0xE9, not UTF-8",
                f"line:{name}",
            )
        )
    return defects
