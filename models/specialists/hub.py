"""Hub-model specialists: transformers detectors, captioners and Florence-2, from a local folder.

Three adapters turn a model saved with ``save_pretrained`` into a specialist:

``HubObjectDetector`` (kind ``hf_object_detection``)
    A closed-set detector (DETR and the other ``AutoModelForObjectDetection`` models: the
    categories are the model's ``id2label``) or an open-vocabulary one (OWL-ViT / OWLv2 and
    Grounding DINO: the categories are text queries, ``labels`` or the ontology's categories).
    Rows: ``region_text`` / task ``object``.

``HubCaptioner`` (kind ``hf_image_to_text``)
    BLIP or GIT captioning. Rows: ``text`` / task ``brief_caption`` (setting ``task``).

``Florence2Specialist`` (kind ``florence2``)
    transformers' native Florence-2 run for each task prompt of ``tasks``; its answers are
    parsed by ``Florence2Processor.post_process_generation``.

Nothing here names a hub model or downloads anything: ``model_path`` must be a local folder,
and every ``from_pretrained`` call is made with ``local_files_only=True``. A relative
``model_path`` is resolved against the current working directory.

Common settings: ``model_path`` (required), ``batch_size`` (images per forward pass, default 8)
and ``dtype`` (``float32``, ``bfloat16`` or ``float16``; half precision is used only when the
build context's device is CUDA, a CPU run always uses float32).

``version`` is a short hash of the model folder (the contents of its configuration files, the
names and sizes of its other files: weights, tokenizer) together with the settings that change
what the model says (threshold, labels, tasks, generation lengths, beams, dtype), so another
model or another operating point writes labels under another ``source``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch
from PIL import Image

from models.specialists.base import ImageRef, LabelRow
from models.specialists.registry import BuildContext

# the configuration files whose contents go into the version; other files count by name and size
_CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- shared plumbing -----------------------------------------------------------------------------


def resolve_model_path(settings: dict[str, Any], kind: str) -> Path:
    """The local model folder named by ``settings["model_path"]``, or a ValueError saying why not."""
    raw = settings.get("model_path")
    if not raw:
        raise ValueError(
            f"{kind}: the setting 'model_path' is required: a local folder holding a model saved "
            "with save_pretrained (config.json and weights); no hub model is downloaded"
        )
    path = Path(str(raw)).expanduser()
    if not path.exists():
        if _HUB_ID.match(str(raw)) and not str(raw).startswith((".", "/", "~")):
            raise ValueError(
                f"{kind}: model_path {str(raw)!r} is not an existing local folder (relative paths "
                f"are read from {Path.cwd()}); it looks like a hub model id. This adapter never "
                "downloads: fetch the model on a machine with network access, copy its folder "
                "here and set model_path to that folder"
            )
        raise ValueError(f"{kind}: model_path {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{kind}: model_path {str(path)!r} is a file, not a model folder")
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{kind}: model_path {str(path)!r} has no config.json; point it at the folder that "
            "save_pretrained wrote"
        )
    return path.resolve()


def model_fingerprint(path: Path) -> str:
    """A short hash of a model folder: config file contents, other files' names and sizes.

    Weights are not read (they can be gigabytes); a different model has a different
    configuration or different weight files, and either changes the hash.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(file.name.encode())
        if file.name in _CONFIG_FILES:
            digest.update(file.read_bytes())
        else:
            digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()[:12]


def _check_settings(kind: str, settings: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"{kind}: unknown settings {unknown}; allowed: {sorted(allowed)}")


def _dtype_for(kind: str, setting: Any, device: str) -> torch.dtype:
    name = str(setting or "float32")
    if name not in _DTYPES:
        raise ValueError(f"{kind}: dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    # half precision only on a GPU: on CPU it is slow and loses accuracy
    return _DTYPES[name] if str(device).startswith("cuda") else torch.float32


def _chunks(items: Sequence[ImageRef], size: int) -> Iterator[Sequence[ImageRef]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _open_rgb(image: ImageRef) -> Image.Image:
    with Image.open(image.path) as opened:
        return opened.convert("RGB")


def _to_device(inputs: Any, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Move processor outputs to the device; floating tensors (pixels) take the model's dtype."""
    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        moved[key] = value
    return moved


def _clip_box(box: Sequence[float], width: int, height: int) -> list[float] | None:
    """``box`` clipped to the image, or None when nothing of positive area is left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return [x0, y0, x1, y1]


def _clip_quad(quad: Sequence[float], width: int, height: int) -> list[float] | None:
    coords = [float(v) for v in quad]
    if len(coords) != 8 or not all(math.isfinite(v) for v in coords):
        return None
    clipped = [min(max(v, 0.0), width if i % 2 == 0 else height) for i, v in enumerate(coords)]
    xs, ys = clipped[0::2], clipped[1::2]
    if max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0:
        return None
    return clipped


def _unit(score: float) -> float:
    return min(max(float(score), 0.0), 1.0) if math.isfinite(float(score)) else 0.0


def _region_row(
    task: str,
    region_kind: str,
    box: list[float],
    text: str,
    score: float,
    *,
    category: str | None = None,
    quad: list[float] | None = None,
) -> LabelRow:
    row: LabelRow = {
        "annotation_type": "region_text",
        "task": task,
        "region_kind": region_kind,
        "box": box,
        "text": text,
        "score": _unit(score),
    }
    if category is not None:
        row["category"] = category
    if quad is not None:
        row["quad"] = quad
    return row


def _text_row(task: str, text: str, score: float) -> LabelRow:
    return {"annotation_type": "text", "task": task, "text": text, "score": _unit(score)}


def _from_pretrained(kind: str, loader: Any, path: Path, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        name = getattr(loader, "__name__", loader)
        raise ValueError(f"{kind}: cannot load {name} from {path}: {error}") from error


def _eos_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    text_config = getattr(model.config, "text_config", None)
    # BLIP's decoder stops on its [SEP] token, which generate is given explicitly
    sep = getattr(text_config, "sep_token_id", None) if model.config.model_type == "blip" else None
    if isinstance(sep, int):
        ids.add(sep)
    return ids


def _generated(
    model: Any, output: Any, num_beams: int, skip_first: set[int]
) -> list[tuple[list[int], float]]:
    """Each generated token sequence (up to and including its end token) and its confidence.

    The confidence is exp(mean log-probability of the generated tokens), from the per-step
    scores that generate returns (``compute_transition_scores``). A token forced at the first
    step (Florence-2's ``<s>``, ids in ``skip_first``) has log-probability 0 and is left out of
    the mean. Memory: generate keeps one (batch x beams, vocabulary) tensor per step for this.
    """
    transition = model.compute_transition_scores(
        output.sequences,
        output.scores,
        beam_indices=getattr(output, "beam_indices", None) if num_beams > 1 else None,
        normalize_logits=num_beams == 1,  # greedy scores are logits; beam scores are log-probs
    )
    # the scores line up with the last tokens of each sequence (beam search can run more
    # steps than the returned beams are long, so len(output.scores) is not the length)
    tokens = output.sequences[:, -transition.shape[1] :]
    eos = _eos_ids(model)
    results = []
    for row_tokens, row_scores in zip(tokens.tolist(), transition.float().cpu().tolist(), strict=True):
        end = next((i + 1 for i, tok in enumerate(row_tokens) if tok in eos), len(row_tokens))
        start = 1 if row_tokens and row_tokens[0] in skip_first and end > 1 else 0
        logprobs = [s for s in row_scores[start:end] if math.isfinite(s)]
        score = math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0
        results.append((row_tokens[:end], score))
    return results


class _HubSpecialist:
    """Settings, device, version and batching shared by the three adapters."""

    kind = ""
    allowed_settings: set[str] = {"model_path", "batch_size", "dtype"}
    annotation_types: tuple[str, ...] = ()

    def __init__(self, name: str, settings: dict[str, Any] | None, context: BuildContext) -> None:
        settings = dict(settings or {})
        _check_settings(self.kind, settings, self.allowed_settings)
        self.name = name
        self.settings = settings
        self.device = context.device
        self.model_path = resolve_model_path(settings, self.kind)
        self.dtype = _dtype_for(self.kind, settings.get("dtype"), self.device)
        self.batch_size = int(settings.get("batch_size", 8))
        if self.batch_size < 1:
            raise ValueError(f"{self.kind}: batch_size must be at least 1")

    def _set_version(self, **operating_point: Any) -> None:
        payload = json.dumps(
            [model_fingerprint(self.model_path), str(self.dtype), operating_point],
            sort_keys=True,
            default=str,
        )
        self.version = hashlib.sha256(payload.encode()).hexdigest()[:12]

    def _place(self, model: Any) -> Any:
        return model.to(self.device).eval()

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        rows: list[list[LabelRow]] = []
        for batch in _chunks(list(images), self.batch_size):
            pictures = [_open_rgb(image) for image in batch]
            with torch.inference_mode():
                rows.extend(self._annotate_batch(pictures))
        return rows

    def _annotate_batch(self, pictures: list[Image.Image]) -> list[list[LabelRow]]:
        raise NotImplementedError


# -- object detection ----------------------------------------------------------------------------

_OWL_TYPES = ("owlvit", "owlv2")
_GROUNDING_TYPES = ("grounding-dino", "mm-grounding-dino")


class HubObjectDetector(_HubSpecialist):
    """A transformers object detector, closed-set (DETR family) or open-vocabulary (OWL, Grounding DINO).

    Settings: ``model_path``; ``threshold`` (default 0.5 closed-set, 0.1 OWL, 0.25 Grounding
    DINO); ``text_threshold`` (Grounding DINO, default 0.25); ``labels`` (text queries of an
    open-vocabulary model, default the ontology's categories); ``batch_size``; ``dtype``.

    Boxes are ``[x0, y0, x1, y1]`` in pixels of the original image, clipped to it; a box with
    no area left after clipping is dropped. ``category`` and ``text`` are the class name
    (``id2label``) or the query; ``score`` is the model's confidence for that class.
    """

    kind = "hf_object_detection"
    allowed_settings = _HubSpecialist.allowed_settings | {"threshold", "text_threshold", "labels"}
    annotation_types = ("region_text",)

    def __init__(self, name: str, settings: dict[str, Any] | None, context: BuildContext) -> None:
        super().__init__(name, settings, context)
        import transformers
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
            MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES,
        )

        config = _from_pretrained(self.kind, transformers.AutoConfig, self.model_path)
        self.model_type = config.model_type
        if self.model_type in _OWL_TYPES + _GROUNDING_TYPES:
            self.flavour = "owl" if self.model_type in _OWL_TYPES else "grounding"
            processor_class = transformers.AutoProcessor
            model_class = transformers.AutoModelForZeroShotObjectDetection
            self.queries = [str(q) for q in (self.settings.get("labels") or context.categories)]
            if not self.queries:
                raise ValueError(
                    f"{self.kind}: {self.model_type} is open-vocabulary and needs text queries: "
                    "set 'labels' or give the build context the ontology's categories"
                )
            default_threshold = 0.1 if self.flavour == "owl" else 0.25
        elif self.model_type in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES:
            self.flavour = "closed"
            if self.settings.get("labels"):
                raise ValueError(
                    f"{self.kind}: {self.model_type} is a closed-set detector (its classes are "
                    "its id2label); 'labels' only applies to open-vocabulary models"
                )
            processor_class = transformers.AutoImageProcessor
            model_class = transformers.AutoModelForObjectDetection
            self.queries = []
            default_threshold = 0.5
        else:
            supported = sorted({*MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, *_OWL_TYPES, *_GROUNDING_TYPES})
            zero_shot = self.model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES
            hint = " (of the zero-shot detectors only OWL and Grounding DINO are)" if zero_shot else ""
            raise ValueError(
                f"{self.kind}: model_type {self.model_type!r} is not an object detector this "
                f"adapter knows{hint}; supported: {supported}"
            )
        self.threshold = float(self.settings.get("threshold", default_threshold))
        self.text_threshold = float(self.settings.get("text_threshold", 0.25))
        self.processor = _from_pretrained(self.kind, processor_class, self.model_path)
        model = _from_pretrained(self.kind, model_class, self.model_path, dtype=self.dtype)
        self.model = self._place(model)
        if self.flavour == "grounding":
            self._prepare_grounding_text()
        self._set_version(
            threshold=self.threshold,
            text_threshold=self.text_threshold if self.flavour == "grounding" else None,
            labels=self.queries,
        )

    def _prepare_grounding_text(self) -> None:
        # Grounding DINO reads one text, "cat. dog. car.", and scores every box against every
        # token; each query's character span tells which tokens are that query's
        parts, spans, position = [], [], 0
        for query in self.queries:
            phrase = query.strip().lower().replace(".", " ")
            parts.append(phrase)
            spans.append((position, position + len(phrase)))
            position += len(phrase) + 2  # ". "
        self.grounding_text = ". ".join(parts) + "."
        encoded = self.processor.tokenizer(self.grounding_text, return_offsets_mapping=True)
        limit = int(getattr(self.model.config, "max_text_len", 256))
        if len(encoded["input_ids"]) > limit:
            raise ValueError(
                f"{self.kind}: the {len(self.queries)} labels make {len(encoded['input_ids'])} "
                f"text tokens, more than this model's max_text_len {limit}; use fewer labels"
            )
        token_query = []
        for start, end in encoded["offset_mapping"]:
            hits = [q for q, (s, e) in enumerate(spans) if end > start and start < e and end > s]
            token_query.append(hits[0] if hits else -1)
        self.grounding_token_query = torch.tensor(token_query)

    def _annotate_batch(self, pictures: list[Image.Image]) -> list[list[LabelRow]]:
        sizes = [(picture.height, picture.width) for picture in pictures]
        if self.flavour == "closed":
            inputs = self.processor(images=pictures, return_tensors="pt")
        elif self.flavour == "owl":
            inputs = self.processor(
                text=[self.queries] * len(pictures),
                images=pictures,
                return_tensors="pt",
                truncation=True,
            )
        else:
            inputs = self.processor(
                text=[self.grounding_text] * len(pictures),
                images=pictures,
                return_tensors="pt",
                padding=True,
            )
        outputs = self.model(**_to_device(inputs, self.device, self.dtype))
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()

        if self.flavour == "closed":
            results = self.processor.post_process_object_detection(
                outputs, threshold=self.threshold, target_sizes=sizes
            )
            id2label = self.model.config.id2label
            found = [
                [
                    (box, float(score), str(id2label.get(int(label), label)))
                    for box, score, label in zip(
                        r["boxes"].tolist(), r["scores"].tolist(), r["labels"].tolist(), strict=True
                    )
                ]
                for r in results
            ]
        elif self.flavour == "owl":
            results = self.processor.post_process_grounded_object_detection(
                outputs,
                threshold=self.threshold,
                target_sizes=sizes,
                text_labels=[self.queries] * len(pictures),
            )
            found = [
                [
                    (box, float(score), self.queries[int(label)])
                    for box, score, label in zip(
                        r["boxes"].tolist(), r["scores"].tolist(), r["labels"].tolist(), strict=True
                    )
                ]
                for r in results
            ]
        else:
            found = self._grounding_results(outputs, inputs["input_ids"], sizes)

        batch_rows = []
        for (height, width), detections in zip(sizes, found, strict=True):
            rows = []
            for box, score, category in detections:
                clipped = _clip_box(box, width, height)
                if clipped is None or category in ("N/A", ""):  # COCO DETR's unused ids say N/A
                    continue
                rows.append(_region_row("object", "object", clipped, category, score, category=category))
            batch_rows.append(rows)
        return batch_rows

    def _grounding_results(
        self, outputs: Any, input_ids: torch.Tensor, sizes: list[tuple[int, int]]
    ) -> list[list[tuple[list[float], float, str]]]:
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            input_ids,
            threshold=self.threshold,
            text_threshold=self.text_threshold,
            target_sizes=sizes,
        )
        # membership[t, q]: text token t is part of query q
        token_query = self.grounding_token_query.to(outputs.logits.device)
        queries = torch.arange(len(self.queries), device=token_query.device)
        membership = token_query[:, None] == queries[None, :]
        found = []
        for logits, result in zip(outputs.logits, results, strict=True):
            probs = logits.sigmoid()
            kept = probs[probs.max(-1).values > self.threshold]  # the boxes the post-processor kept
            # a box's category is the query whose tokens it matches best; its score is that match
            token_probs = kept[:, : len(token_query), None]  # (boxes, tokens, 1)
            per_query = token_probs.masked_fill(~membership, 0.0).amax(dim=1)  # (boxes, queries)
            detections = []
            for box, query_scores in zip(result["boxes"].tolist(), per_query.tolist(), strict=True):
                best = max(range(len(query_scores)), key=query_scores.__getitem__)
                if query_scores[best] > self.threshold:
                    detections.append((box, query_scores[best], self.queries[best]))
            found.append(detections)
        return found


# -- image to text -------------------------------------------------------------------------------

_CAPTION_TASKS = ("brief_caption", "detailed_caption", "more_detailed_caption")


class HubCaptioner(_HubSpecialist):
    """A transformers image captioner (BLIP, GIT): one caption per image.

    Settings: ``model_path``; ``max_new_tokens`` (default 30); ``num_beams`` (default 3);
    ``task`` (the caption granularity written, default ``brief_caption``); ``batch_size``;
    ``dtype``. ``score`` is exp(mean token log-probability) of the generated caption. An
    image whose caption decodes to an empty string gets no row.
    """

    kind = "hf_image_to_text"
    allowed_settings = _HubSpecialist.allowed_settings | {"max_new_tokens", "num_beams", "task"}
    annotation_types = ("text",)

    def __init__(self, name: str, settings: dict[str, Any] | None, context: BuildContext) -> None:
        super().__init__(name, settings, context)
        import transformers

        self.max_new_tokens = int(self.settings.get("max_new_tokens", 30))
        self.num_beams = int(self.settings.get("num_beams", 3))
        self.task = str(self.settings.get("task", "brief_caption"))
        if self.task not in _CAPTION_TASKS:
            raise ValueError(f"{self.kind}: task must be one of {list(_CAPTION_TASKS)}, got {self.task!r}")
        config = _from_pretrained(self.kind, transformers.AutoConfig, self.model_path)
        classes = {
            "blip": transformers.BlipForConditionalGeneration,
            "git": transformers.GitForCausalLM,
        }
        if config.model_type not in classes:
            hint = " (use kind 'florence2' for Florence-2)" if config.model_type == "florence2" else ""
            raise ValueError(
                f"{self.kind}: model_type {config.model_type!r} is not supported{hint}; "
                f"supported: {sorted(classes)}"
            )
        self.processor = _from_pretrained(self.kind, transformers.AutoProcessor, self.model_path)
        model = _from_pretrained(self.kind, classes[config.model_type], self.model_path, dtype=self.dtype)
        self.model = self._place(model)
        self._set_version(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, task=self.task)

    def _annotate_batch(self, pictures: list[Image.Image]) -> list[list[LabelRow]]:
        inputs = self.processor(images=pictures, return_tensors="pt")
        inputs = _to_device(inputs, self.device, self.dtype)
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        rows = []
        for tokens, score in _generated(self.model, output, self.num_beams, skip_first=set()):
            text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            rows.append([_text_row(self.task, text, score)] if text else [])
        return rows


# -- Florence-2 ----------------------------------------------------------------------------------

# Florence-2 task prompt -> (annotation_type, label-store task)
FLORENCE2_TASKS: dict[str, tuple[str, str]] = {
    "<OD>": ("region_text", "object"),
    "<DENSE_REGION_CAPTION>": ("region_text", "region_caption"),
    "<OCR_WITH_REGION>": ("region_text", "ocr"),
    "<CAPTION>": ("text", "brief_caption"),
    "<DETAILED_CAPTION>": ("text", "detailed_caption"),
    "<MORE_DETAILED_CAPTION>": ("text", "more_detailed_caption"),
}

# Florence2PostProcessor's parse rules, as in the released Florence-2 processors; used when a
# saved processor carries none (post_process_generation then fails with "Unsupported parse task")
DEFAULT_FLORENCE2_PARSE_CONFIG: dict[str, dict[str, Any]] = {
    "ocr": {"AREA_THRESHOLD": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": []},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


class Florence2Specialist(_HubSpecialist):
    """transformers' native Florence-2 (``Florence2ForConditionalGeneration``) as a specialist.

    Settings: ``model_path`` (a folder in the native transformers format, model_type
    ``florence2`` with a ``Florence2Processor``); ``tasks`` (task prompts, default
    ``["<OD>"]``; supported: the keys of ``FLORENCE2_TASKS``); ``max_new_tokens`` (default
    256); ``num_beams`` (default 3, as Florence-2's own examples); ``batch_size``; ``dtype``.

    Each task runs as one batched generate over the batch's images. Rows: ``<OD>`` ->
    region_text/object (category and text the phrase); ``<DENSE_REGION_CAPTION>`` ->
    region_text/region_caption; ``<OCR_WITH_REGION>`` -> region_text/ocr with the quad and its
    bounding box, region_kind text; the caption prompts -> text rows of their granularity.
    Scores: Florence-2 gives no per-region confidence, so every row of one generation carries
    that generation's exp(mean token log-probability).
    """

    kind = "florence2"
    allowed_settings = _HubSpecialist.allowed_settings | {"tasks", "max_new_tokens", "num_beams"}

    def __init__(self, name: str, settings: dict[str, Any] | None, context: BuildContext) -> None:
        super().__init__(name, settings, context)
        import transformers

        tasks = self.settings.get("tasks", ["<OD>"])
        self.tasks = [tasks] if isinstance(tasks, str) else [str(task) for task in tasks]
        unknown = [task for task in self.tasks if task not in FLORENCE2_TASKS]
        if unknown or not self.tasks:
            raise ValueError(
                f"{self.kind}: tasks must be some of {list(FLORENCE2_TASKS)}, got {unknown or self.tasks}"
            )
        self.annotation_types = tuple(sorted({FLORENCE2_TASKS[task][0] for task in self.tasks}))
        self.max_new_tokens = int(self.settings.get("max_new_tokens", 256))
        self.num_beams = int(self.settings.get("num_beams", 3))

        config = _from_pretrained(self.kind, transformers.AutoConfig, self.model_path)
        custom_code = bool(getattr(config, "auto_map", None))
        if config.model_type != "florence2" or custom_code:
            raise ValueError(
                f"{self.kind}: {self.model_path} is not a native transformers Florence-2 folder "
                f"(model_type {config.model_type!r}, custom code: {custom_code}); use a checkpoint "
                "converted to transformers' Florence2ForConditionalGeneration"
            )
        self.processor = _from_pretrained(self.kind, transformers.Florence2Processor, self.model_path)
        if not self.processor.post_processor.parse_task_config:
            self.processor.post_processor.parse_task_config = DEFAULT_FLORENCE2_PARSE_CONFIG
        model = _from_pretrained(
            self.kind, transformers.Florence2ForConditionalGeneration, self.model_path, dtype=self.dtype
        )
        self.model = self._place(model)
        self._set_version(tasks=self.tasks, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)

    def _annotate_batch(self, pictures: list[Image.Image]) -> list[list[LabelRow]]:
        rows: list[list[LabelRow]] = [[] for _ in pictures]
        tokenizer = self.processor.tokenizer
        for task in self.tasks:
            prompts = [task] * len(pictures)
            inputs = self.processor(text=prompts, images=pictures, return_tensors="pt")
            output = self.model.generate(
                **_to_device(inputs, self.device, self.dtype),
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
            generations = _generated(self.model, output, self.num_beams, skip_first={tokenizer.bos_token_id})
            for picture, image_rows, (tokens, score) in zip(pictures, rows, generations, strict=True):
                tokens = [t for t in tokens if t != tokenizer.pad_token_id]
                text = tokenizer.decode(tokens, skip_special_tokens=False)
                answer = self.processor.post_process_generation(
                    text=text, task=task, image_size=(picture.width, picture.height)
                )[task]
                image_rows.extend(self._rows(task, answer, score, picture.width, picture.height))
        return rows

    @staticmethod
    def _rows(task: str, answer: Any, score: float, width: int, height: int) -> list[LabelRow]:
        annotation_type, label_task = FLORENCE2_TASKS[task]
        if annotation_type == "text":
            text = str(answer).strip()
            return [_text_row(label_task, text, score)] if text else []
        rows = []
        if label_task == "ocr":
            for quad, text in zip(answer["quad_boxes"], answer["labels"], strict=True):
                quad = _clip_quad(quad, width, height)
                text = str(text).strip()
                if quad is None or not text:
                    continue
                box = [min(quad[0::2]), min(quad[1::2]), max(quad[0::2]), max(quad[1::2])]
                rows.append(_region_row("ocr", "text", box, text, score, quad=quad))
            return rows
        for box, text in zip(answer["bboxes"], answer["labels"], strict=True):
            box = _clip_box(box, width, height)
            text = str(text).strip()
            if box is None or not text:
                continue
            category = text if label_task == "object" else None
            rows.append(_region_row(label_task, "object", box, text, score, category=category))
        return rows
