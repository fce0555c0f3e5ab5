"""The data engine's phases and the Dagster jobs that run each, in order.

A light module (no Dagster import), so the command line can list the phases without building
the definitions; a phase is also a DVC stage of the same name in ``dvc.yaml``. The phases of
``ITERATION_PHASES`` run once per iteration: iteration k's labels (merged from iteration k-1's
labels and its model's re-annotation; the initial annotations in iteration 0) are filtered and
gated, written as a corpus, trained on, and re-annotated by the model for iteration k+1; the
labels most likely wrong go to a person (the review queue), whose verdicts iteration k+1 trusts.
"""

WORLD_JOB = "render_world"
CATALOG_JOB = "catalog_sources"
INGEST_SHARDS_JOB = "ingest_shards"
AUDIT_SPLIT_JOB = "audit_split"
TRAIN_SPECIALISTS_JOB = "train_specialists"
ANNOTATE_SHARDS_JOB = "annotate_shards"
SCORE_ANNOTATIONS_JOB = "score_annotations"
MERGE_SHARDS_JOB = "merge_shards"
FILTER_SHARDS_JOB = "filter_shards"
FILTER_REPORT_JOB = "report_filtering"
CORPUS_SHARDS_JOB = "write_corpus"
TRAIN_MODEL_JOB = "train_model"
SCORE_MODEL_JOB = "score_model"
REFINE_SPECIALISTS_JOB = "train_refine_specialists"
REANNOTATE_SHARDS_JOB = "reannotate_shards"
QUEUE_REVIEW_JOB = "queue_review"
READ_VERDICTS_JOB = "read_review_verdicts"

PHASE_JOBS = {
    "world": (WORLD_JOB,),
    "ingest": (CATALOG_JOB, INGEST_SHARDS_JOB),
    "audit": (AUDIT_SPLIT_JOB,),
    "annotate": (TRAIN_SPECIALISTS_JOB, ANNOTATE_SHARDS_JOB, SCORE_ANNOTATIONS_JOB),
    "merge": (MERGE_SHARDS_JOB,),
    "filter": (FILTER_SHARDS_JOB, FILTER_REPORT_JOB),
    "corpus": (CORPUS_SHARDS_JOB,),
    "model": (TRAIN_MODEL_JOB, SCORE_MODEL_JOB),
    "refine": (REFINE_SPECIALISTS_JOB, REANNOTATE_SHARDS_JOB),
    "review": (QUEUE_REVIEW_JOB, READ_VERDICTS_JOB),
}
# the evaluation split is audited and frozen before anything is trained
# `relabel export --format F` runs one of these, for one iteration (not a phase of the loop)
EXPORT_JOBS = {fmt: f"export_{fmt.replace('-', '_')}" for fmt in ("coco", "florence2", "hf-parquet", "yolo")}
SETUP_PHASES = ("world", "ingest", "audit", "annotate")
ITERATION_PHASES = ("merge", "filter", "corpus", "model", "refine", "review")
# the phases that give an iteration's labels and their quality (what the last iteration runs)
LABEL_PHASES = ("merge", "filter")
