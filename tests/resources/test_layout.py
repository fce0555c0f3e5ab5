"""The layout is the one home of asset keys and paths: every asset the definitions build is in
it, and every path follows it."""

from pathlib import Path

from dagster import AssetKey

from models.specialists.registry import TRAINERS
from pipelines.definitions import build_definitions
from relabel.config import load_params
from resources import layout


def test_every_asset_of_the_definitions_is_declared_in_the_layout(tiny_project):
    graph = build_definitions(str(tiny_project)).resolve_asset_graph()
    annotate = load_params(tiny_project / "params.yaml").annotate
    specialists = [spec for spec in (*annotate.perception, *annotate.language) if spec.enabled]
    trained = [spec.name for spec in specialists if spec.kind in TRAINERS]
    made_per_name = {
        *(layout.specialist(spec.name) for spec in specialists),
        *(layout.specialist_quarantine(spec.name) for spec in specialists),
        *(layout.specialist_model(name) for name in trained),
    }
    assert set(graph.get_all_asset_keys()) == set(layout.DECLARED) | made_per_name
    # one key, one declaration
    assert len(layout.DECLARED) == len(set(layout.DECLARED))


def test_partition_paths_follow_the_partitions_of_the_asset():
    data = Path("/d")
    assert layout.partition_path(data, layout.SOURCE_CATALOG, None) == data / "ingest/source_catalog.parquet"
    assert layout.partition_path(data, layout.IMAGES, "shard-03") == data / "ingest/images/shard-03.parquet"
    assert layout.partition_path(data, layout.LABEL_QUALITY, "2") == data / "filter/label_quality/2.parquet"
    assert (
        layout.partition_path(data, layout.FILTERED_LABELS, "1|shard-00")
        == layout.frames_dir(layout.FILTERED_LABELS, data, 1) / "shard-00.parquet"
        == data / "filter/filtered_labels/iteration-1/shard-00.parquet"
    )
    assert layout.frames_dir(layout.IMAGES, data) == data / "ingest/images"


def test_files_beside_the_frames_go_where_the_layout_says():
    data = Path("/d")
    assert (
        layout.files_dir(layout.CAPTION_SPECIALIST, data, 2) == data / "refine/caption_specialist/iteration-2"
    )
    assert layout.files_dir(layout.LABEL_QUALITY, data, 0) == data / "filter/quality/iteration-0"
    assert layout.files_dir(layout.HELDOUT_SCORES, data, 3) == data / "model/iteration-3/heldout"
    assert layout.files_dir(layout.FLORENCE2_MODEL, data, 3) == data / "model/iteration-3"
    assert layout.files_dir(layout.EXPORTS["hf-parquet"], data, 1) == data / "export/hf-parquet/iteration-1"
    assert layout.files_dir(layout.FROZEN_SPLIT, data) == data / "audit/frozen"
    assert layout.files_dir(layout.specialist_model("tinydet"), data) == data / "annotate/tinydet_model"
    assert (
        layout.gate_docs_dir(data, "rare_classes_kept", "1|shard-00")
        == data / "gx_docs/rare_classes_kept/1/shard-00"
    )


def test_iterations_in_a_folder_are_found_in_numeric_order(tmp_path):
    for name in ("iteration-10", "iteration-2", "iteration-0", "iteration-x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "iteration-3").touch()  # a file, not an iteration's folder
    assert layout.iterations_in(tmp_path) == ["0", "2", "10"]


def test_every_gate_names_an_asset_of_the_layout():
    assert set(layout.GATES) <= set(layout.DECLARED)
    assert layout.GATES[AssetKey(["audit", "frozen_split"])] == ("split_unchanged",)
