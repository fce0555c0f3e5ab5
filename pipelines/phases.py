"""The data engine's phases and the Dagster jobs that run each, in order.

A light module (no Dagster import), so the command line can list the phases without building
the definitions; a phase is also a DVC stage of the same name in ``dvc.yaml``.
"""

WORLD_JOB = "render_world"
CATALOG_JOB = "catalog_sources"
INGEST_SHARDS_JOB = "ingest_shards"
TRAIN_SPECIALISTS_JOB = "train_specialists"
ANNOTATE_SHARDS_JOB = "annotate_shards"
SCORE_ANNOTATIONS_JOB = "score_annotations"
FILTER_SHARDS_JOB = "filter_shards"
FILTER_REPORT_JOB = "report_filtering"
CORPUS_SHARDS_JOB = "write_corpus"
TRAIN_MODEL_JOB = "train_model"
SCORE_MODEL_JOB = "score_model"

PHASE_JOBS = {
    "world": (WORLD_JOB,),
    "ingest": (CATALOG_JOB, INGEST_SHARDS_JOB),
    "annotate": (TRAIN_SPECIALISTS_JOB, ANNOTATE_SHARDS_JOB, SCORE_ANNOTATIONS_JOB),
    "filter": (FILTER_SHARDS_JOB, FILTER_REPORT_JOB),
    "corpus": (CORPUS_SHARDS_JOB,),
    "model": (TRAIN_MODEL_JOB, SCORE_MODEL_JOB),
}
