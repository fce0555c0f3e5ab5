"""End to end, phase 1: every specialist per shard, their consensus, the merge with the
human labels and the scores, materialized with `dagster.materialize` on a tiny world."""

import mlflow
import polars as pl
import pytest

from relabel.config import load_params
from relabel.labels import check_schema

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def annotated(annotated_project):
    root, results, _ = annotated_project
    return root, results


def _all(root, *key):
    return pl.read_parquet(root.joinpath("data", *key, "*.parquet"))


def test_each_specialist_labels_each_shard_with_counts_and_timing(annotated):
    root, results = annotated
    params = load_params(root / "params.yaml").annotate
    for shard in ("shard-00", "shard-01"):
        materialized = {
            m.asset_key.path[-1]: m for m in results[("annotate_shards", shard)].get_asset_materialization_events()
            for m in [m.materialization]
        }
        for spec in (*params.perception, *params.language):
            if not spec.enabled:
                continue
            metadata = materialized[spec.name].metadata
            assert metadata["images"].value > 0
            assert metadata["seconds_per_100_images"].value >= 0
            check_schema(pl.read_parquet(root / "data" / "annotate" / spec.name / f"{shard}.parquet"), "labels")


def test_every_human_label_is_kept_verbatim_in_the_initial_annotations(annotated):
    root, _ = annotated
    human = _all(root, "ingest", "human_labels").sort("label_id")
    initial = _all(root, "annotate", "initial_annotations")
    kept = initial.filter(pl.col("source") == "human").sort("label_id")
    assert kept.equals(human)
    machine = initial.filter(pl.col("source") != "human")
    assert machine.height > 0
    assert set(machine["annotation_type"]) == {"text", "region_text", "text_phrase_region"}


def test_consensus_keeps_provenance_and_quarantines_lone_low_boxes(annotated):
    root, _ = annotated
    fused = _all(root, "annotate", "consensus_regions")
    members = pl.concat([_all(root, "annotate", name) for name in ("shapes", "tinydet", "ocr")])
    assert fused.height > 0
    provenance = set(fused["provenance"].explode().drop_nulls())
    assert provenance <= set(members["label_id"]), "a fused region names labels no specialist produced"
    assert (fused["agreement"] >= 1).all()
    quarantine = _all(root, "annotate", "consensus_quarantine")
    assert set(quarantine["reason"]) <= {"lone_low_score"}


def test_scores_are_an_mlflow_run_and_in_the_asset_metadata(annotated):
    root, results = annotated
    (event,) = results["score_annotations"].get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert "consensus_regions" in metadata["summary"].value
    assert metadata["f1_by_class"].value.startswith("![")
    run_id = metadata["mlflow_run"].value.rsplit("/", 1)[-1]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'data' / 'mlflow' / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert "f1.consensus_regions" in run.data.metrics
    assert 0 <= run.data.metrics["f1.consensus_regions"] <= 1
