"""The embedded world: relabel's default data, rendered procedurally with full ground truth.

Scenes of pictogram objects (15 categories, two of them rare) on sky, grass, water or indoor
backgrounds, with occlusion and rotated sign text, come as two collections with the noisy,
partial labels real data has: a curated one with COCO boxes, polygons and captions, and a web
one with alt-text; plus a few injected defects for the quarantine. The complete ground truth
for all three annotation types (captions at three granularities, object / region-caption /
OCR regions, phrase grounding) and the scene graphs are written apart and never read by the
engine's phases.

    summary = render_world(params.world, world_dir, truth_dir)
"""

from relabel.world.build import WORLD_VERSION, WorldSummary, render_world, world_preview
from relabel.world.defects import DEFECT_KINDS, Defect

__all__ = [
    "DEFECT_KINDS",
    "WORLD_VERSION",
    "Defect",
    "WorldSummary",
    "render_world",
    "world_preview",
]
