"""Every asset of the data engine in one table: its key, where its files are, and its gates.

Assets, asset checks, the IO manager, the command line and ``relabel status`` take keys and
paths from here and never build them. An asset ``<phase>/<name>`` keeps the frames the IO
manager writes for it under ``<data_dir>/<phase>/<name>``:

- ``<name>.parquet`` beside that folder when it has no partitions;
- ``<shard>.parquet`` per shard;
- ``<iteration>.parquet`` per iteration;
- ``iteration-<k>/<shard>.parquet`` per iteration and shard.

``<phase>`` is also the DVC stage in ``dvc.yaml`` whose output holds every file of the phase.
What an asset writes beside its frames (reports, charts, model weights, Label Studio files)
goes to its ``files_dir``, per iteration for an iteration's asset.

It imports nothing of the project but Dagster's ``AssetKey``, so that the resources, the gates,
the assets and the wiring can all read it (the core and the models know no asset).
"""

from __future__ import annotations

from pathlib import Path

from dagster import AssetKey

ITERATION_FOLDER = "iteration-{}"


# every key of the table below, and what each declares beyond its name (filled by ``_asset``);
# the specialists' keys are made per name (``specialist`` and the functions beside it)
DECLARED: list[AssetKey] = []
_FILES: dict[AssetKey, str] = {}
GATES: dict[AssetKey, tuple[str, ...]] = {}


def _asset(phase: str, name: str, files: str | None = None, gates: tuple[str, ...] = ()) -> AssetKey:
    """The key ``phase/name``. ``files``: the folder under the data directory of the files
    the asset writes beside its frames (``phase/name`` when None; an iteration's folder is
    ``iteration-<k>`` inside it, or where ``{iteration}`` says). ``gates``: the names of its
    blocking checks, which consumers in later runs honour (``resources.io_manager``)."""
    key = AssetKey([phase, name])
    DECLARED.append(key)
    if files is not None:
        _FILES[key] = files
    if gates:
        GATES[key] = gates
    return key


def files_dir(key: AssetKey, data_dir: Path, iteration: str | int | None = None) -> Path:
    """The folder of the files ``key`` writes beside its frames, of ``iteration`` when it is
    an iteration's asset."""
    files = _FILES.get(key, "/".join(key.path))
    if "{iteration}" in files:
        if iteration is None:
            raise ValueError(f"{key.to_user_string()} keeps its files per iteration: name one")
        return Path(data_dir, *files.format(iteration=iteration).split("/"))
    folder = Path(data_dir, *files.split("/"))
    return folder if iteration is None else folder / ITERATION_FOLDER.format(iteration)


def frames_dir(key: AssetKey, data_dir: Path, iteration: str | int | None = None) -> Path:
    """The folder of the parquet files the IO manager writes for a partitioned asset: its
    shards, its iterations, or with ``iteration`` the shards of that iteration."""
    folder = Path(data_dir, *key.path)
    return folder if iteration is None else folder / ITERATION_FOLDER.format(iteration)


def partition_path(data_dir: Path, key: AssetKey, partition: str | None) -> Path:
    """Where the IO manager keeps ``key``'s ``partition`` (see the module's layout); also how
    an iteration reads the previous iteration's files, which no asset dependency can name (a
    dynamic partition cannot depend on an earlier one of itself)."""
    if partition is None:
        return frames_dir(key, data_dir).with_suffix(".parquet")
    if "|" in str(partition):
        iteration, shard = str(partition).split("|")
        return frames_dir(key, data_dir, iteration) / f"{shard}.parquet"
    return frames_dir(key, data_dir) / f"{partition}.parquet"


def iterations_in(folder: Path) -> list[str]:
    """The iterations whose ``iteration-<k>`` folders ``folder`` holds, in order."""
    found = [p.name.removeprefix("iteration-") for p in folder.glob("iteration-*") if p.is_dir()]
    return sorted((k for k in found if k.isdigit()), key=int)


# phase 0: the embedded world (rendered images and their hidden truth)
EMBEDDED_WORLD = _asset("world", "embedded_world", files="world")
# the world's ground truth: never read by the engine, only by its measures against the truth
GROUND_TRUTH = Path("ground_truth")
GROUND_TRUTH_LABELS = GROUND_TRUTH / "labels.parquet"

# phase 1: the collection, in shards
SOURCE_CATALOG = _asset("ingest", "source_catalog")
CATALOG_QUARANTINE = _asset("ingest", "catalog_quarantine")
IMAGES = _asset("ingest", "images", gates=("images_valid",))
HUMAN_LABELS = _asset("ingest", "human_labels", gates=("human_labels_valid",))
INGEST_QUARANTINE = _asset("ingest", "ingest_quarantine", gates=("ingest_quarantine_explained",))

# the evaluation split: audited by people, then frozen
AUDIT_TASKS = _asset("audit", "tasks", files="audit/label_studio")
AUDITED_LABELS = _asset("audit", "audited_labels", files="audit/label_studio")
FROZEN_SPLIT = _asset("audit", "frozen_split", files="audit/frozen", gates=("split_unchanged",))

# initial annotation by the specialists (one asset each, named in params.yaml), fused
CONSENSUS_REGIONS = _asset("annotate", "consensus_regions")
CONSENSUS_QUARANTINE = _asset("annotate", "consensus_quarantine")
ANNOTATION_CONFLICTS = _asset("annotate", "annotation_conflicts")
INITIAL_ANNOTATIONS = _asset("annotate", "initial_annotations")
INITIAL_QUARANTINE = _asset("annotate", "initial_quarantine")
ANNOTATION_SCORES = _asset("annotate", "annotation_scores", files="annotate/scores")


def specialist(name: str) -> AssetKey:
    """The labels of the specialist ``name`` (``annotate.specialists`` in params.yaml)."""
    return AssetKey(["annotate", name])


def specialist_quarantine(name: str) -> AssetKey:
    """What the specialist ``name`` wrote that broke the label schema."""
    return AssetKey(["annotate", f"{name}_quarantine"])


def specialist_model(name: str) -> AssetKey:
    """A trainable specialist's weights, trained on the human labels (the folder it trains in
    is ``files_dir`` of this key)."""
    return AssetKey(["annotate", f"{name}_model"])


# each iteration: merge, filter, corpus, model, refine, review
ITERATION_LABELS = _asset("merge", "labels")
MERGE_QUARANTINE = _asset("merge", "quarantine")
MERGE_DECISIONS = _asset("merge", "decisions")
TEXT_PARSES = _asset("filter", "text_parses")
FILTER_DECISIONS = _asset("filter", "filter_decisions")
FILTERED_LABELS = _asset(
    "filter",
    "filtered_labels",
    gates=(
        "filtered_labels_valid",
        "filtered_labels_cover_images",
        "filtered_labels_keep_every_class",
        "filtered_labels_one_label_per_object",
    ),
)
FILTER_QUARANTINE = _asset("filter", "filter_quarantine", gates=("filter_quarantine_explained",))
FILTER_REPORT = _asset("filter", "filter_report", files="filter/report")
QUARANTINE_INDEX = _asset("filter", "quarantine_index")
LABEL_QUALITY = _asset("filter", "label_quality", files="filter/quality", gates=("rare_classes_kept",))
CORPUS_EXAMPLES = _asset("corpus", "examples", gates=("no_eval_leakage",))
FLORENCE2_MODEL = _asset("model", "florence2", files="model")
HELDOUT_SCORES = _asset("model", "heldout_scores", files="model/iteration-{iteration}/heldout")
REANNOTATION = _asset("refine", "reannotation")
REANNOTATION_PROBLEMS = _asset("refine", "reannotation_problems")
CAPTION_SPECIALIST = _asset("refine", "caption_specialist")
SELF_TRAINED_SPECIALISTS = _asset("refine", "self_trained_specialists")
REVIEW_QUEUE = _asset("review", "queue", files="review")
REVIEW_VERDICTS = _asset("review", "verdicts", files="review")
# what the verdicts of an audit (audit/audited_labels, review/verdicts) write in its folder:
# one row per label judged, and the labels the verdicts took out with their reasons
DECISIONS_FILE, VERDICTS_QUARANTINE_FILE = "decisions.parquet", "quarantine.parquet"

# the exports, by the command line's format name
EXPORTS = {
    "coco": _asset("export", "coco"),
    "florence2": _asset("export", "florence2"),
    "hf-parquet": _asset("export", "hf_parquet", files="export/hf-parquet"),
    "yolo": _asset("export", "yolo"),
}


def gate_docs_root(data_dir: Path) -> Path:
    """The folder of every gate's Great Expectations Data Docs (``relabel ui`` serves it)."""
    return Path(data_dir, "gx_docs")


def gate_docs_dir(data_dir: Path, check: str, partition: str | None = None) -> Path:
    """Where a gate writes its Great Expectations Data Docs for ``partition``."""
    folder = gate_docs_root(data_dir) / check
    return folder if partition is None else folder.joinpath(*str(partition).split("|"))
