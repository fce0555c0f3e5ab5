"""The embedded default world: the data the demo and the tests run on."""

import shutil

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from relabel.world import render_world, world_preview
from resources.layout import EMBEDDED_WORLD, GROUND_TRUTH, files_dir
from resources.metadata import png_markdown
from resources.services import DvcResource, ProjectResource

WORLD_STAGE = EMBEDDED_WORLD.path[0]


@asset(key=EMBEDDED_WORLD, group_name=WORLD_STAGE, compute_kind="python")
def embedded_world(
    context: AssetExecutionContext, project: ProjectResource, dvc: DvcResource
) -> MaterializeResult:
    """Procedurally rendered scenes with their noisy, partial "human" labels (COCO JSON and
    web alt-text, as a real collection would have) and, stored apart, the full ground truth
    for all three annotation types, which no phase of the engine reads."""
    if project.params.world is None:
        raise Failure(
            "this project has no embedded world (params.yaml world: null): its sources are its own photos"
        )
    world_dir = files_dir(EMBEDDED_WORLD, project.data_dir)
    truth_dir = project.data_dir / GROUND_TRUTH
    for stale in (world_dir, truth_dir):
        shutil.rmtree(stale, ignore_errors=True)
    summary = render_world(project.params.world, world_dir, truth_dir, progress=True)
    version = dvc.commit(stage=WORLD_STAGE, written=world_dir / "ontology.json")
    context.log.info(f"rendered {summary.as_metadata()}")
    return MaterializeResult(
        metadata={
            **summary.as_metadata(),
            "world_dir": MetadataValue.path(str(world_dir)),
            "dvc_stage_hash": version.stage_hash or "(committed by dvc repro)",
            "preview": MetadataValue.md(
                png_markdown(world_preview(world_dir, truth_dir), "ground truth of the first scenes")
            ),
        }
    )
