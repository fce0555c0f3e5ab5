"""Batched inference with the unified model: (image, task prompt) requests in, label rows out.

Each request is one image and one prompt (``models.tasks``: a task token, plus its input for
the prompted tasks). Requests are generated in batches (greedy, or beam search with
``num_beams`` > 1); each generated text is parsed back into label rows by
``models.tasks.parse``, and every row of one generation gets that generation's score:
``exp`` of the mean log-probability of its tokens (beam search: of the beam's length-normalised
score), a confidence in [0, 1] that the filters and the merge policy can threshold. What a
generation said that could not be parsed is returned beside the rows, never dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import torch

from models.corpus import corpus_examples
from models.tasks import (
    CAPTION,
    DENSE_REGION_CAPTION,
    DETAILED_CAPTION,
    MORE_DETAILED_CAPTION,
    OCR,
    OCR_WITH_REGION,
    OD,
    REGION_PROPOSAL,
    TASK_TOKENS,
    parse,
)
from relabel.config import GenerationParams
from relabel.labels import frame, label_id_for

REQUESTS_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "image_path": pl.String,
        "width": pl.Int32,
        "height": pl.Int32,
        "task": pl.String,
        "prompt": pl.String,
    }
)
PROBLEMS_SCHEMA = pl.Schema(
    {"image_id": pl.String, "task": pl.String, "generated": pl.String, "problem": pl.String}
)


@dataclass(frozen=True)
class Generated:
    """``labels``: ``LABELS_SCHEMA`` rows; ``problems``: what could not be read, per request."""

    labels: pl.DataFrame
    problems: pl.DataFrame


def requests_for(images: pl.DataFrame, tasks: list[str]) -> pl.DataFrame:
    """One request per image and prompt-free task (``<OD>``, ``<CAPTION>``, ...); ``images``
    has ``image_id``, ``image_path``, ``width`` and ``height``."""
    unknown = [task for task in tasks if task not in TASK_TOKENS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}")
    per_task = [
        images.select("image_id", "image_path", "width", "height", task=pl.lit(t), prompt=pl.lit(t))
        for t in tasks
    ]
    return pl.concat([pl.DataFrame(schema=REQUESTS_SCHEMA), *per_task], how="vertical_relaxed").cast(
        dict(REQUESTS_SCHEMA)
    )


# the tasks whose prompt is the task token alone; the others carry a region, a phrase, a
# caption or a category from the image's labels
PROMPT_FREE_TASKS = (
    CAPTION,
    DETAILED_CAPTION,
    MORE_DETAILED_CAPTION,
    OD,
    DENSE_REGION_CAPTION,
    REGION_PROPOSAL,
    OCR,
    OCR_WITH_REGION,
)


def reannotation_requests(
    images: pl.DataFrame, labels: pl.DataFrame, tasks: Sequence[str], max_prompts_per_image: int
) -> pl.DataFrame:
    """Every request that asks ``tasks`` about every image of ``images`` (``image_id``,
    ``image_path``, ``width``, ``height``): a prompt-free task once per image, a prompted task
    once per prompt that the image's ``labels`` give (its regions, captions, categories, as the
    corpus writes them), at most ``max_prompts_per_image`` per image and task."""
    free = [task for task in tasks if task in PROMPT_FREE_TASKS]
    prompted = [task for task in tasks if task not in PROMPT_FREE_TASKS]
    written = (
        corpus_examples(
            labels, images.with_columns(uri=pl.col("image_path")), lambda path: path, tasks=prompted
        )
        if prompted
        else None
    )
    asked = pl.DataFrame(schema=REQUESTS_SCHEMA)
    if written is not None and written.height:
        asked = (
            written.select(*REQUESTS_SCHEMA)
            .unique(maintain_order=True)
            .filter(pl.int_range(pl.len()).over("image_id", "task") < max_prompts_per_image)
            .cast(dict(REQUESTS_SCHEMA))
        )
    return pl.concat([requests_for(images, free), asked], how="vertical").sort(
        "task", "image_id", maintain_order=True
    )


@torch.no_grad()
def generate_labels(
    model,
    processor,
    requests: pl.DataFrame,
    settings: GenerationParams,
    *,
    source: str,
    iteration: int,
    progress: bool = False,
) -> Generated:
    """Label rows for every request, from batched generation as ``settings`` (params.yaml
    ``model.generation``) says."""
    from PIL import Image
    from tqdm import tqdm
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    device = next(model.parameters()).device
    model.eval()
    rows, problems = [], []
    # an image's requests side by side, so that its visual tokens (the image encoder: most of
    # the cost of a short answer) are computed once for all its tasks, not once per request
    requests = requests.sort("image_id", maintain_order=True)
    pictures: dict[str, Image.Image] = {}  # image id -> the image, read once
    visual: dict[str, torch.Tensor] = {}  # image id -> its projected visual tokens
    batches = range(0, requests.height, settings.batch_size)
    for start in tqdm(batches, desc=f"generating with {source}", unit="batch", disable=not progress):
        batch = requests.slice(start, settings.batch_size).to_dicts()
        image_ids = [request["image_id"] for request in batch]
        for request in batch:
            if request["image_id"] not in pictures:
                with Image.open(request["image_path"]) as image:
                    pictures[request["image_id"]] = image.convert("RGB")
        inputs = processor(
            text=[r["prompt"] for r in batch],
            images=[pictures[image_id] for image_id in image_ids],
            return_tensors="pt",
            padding=True,
        ).to(device)
        pixel_values = inputs.pop("pixel_values")
        new = [image_id for image_id in dict.fromkeys(image_ids) if image_id not in visual]
        if new:
            first_rows = [image_ids.index(image_id) for image_id in new]
            encoded = model.get_image_features(pixel_values=pixel_values[first_rows]).pooler_output
            visual.update(zip(new, encoded, strict=True))
        image_tokens = torch.stack([visual[image_id] for image_id in image_ids])
        # only the last image's requests can go on into the next batch
        last = image_ids[-1]
        pictures, visual = {last: pictures[last]}, {last: visual[last]}
        output = model.generate(
            **inputs,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=image_tokens)},
            max_new_tokens=settings.max_new_tokens,
            num_beams=settings.num_beams,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
        texts = processor.batch_decode(output.sequences, skip_special_tokens=False)
        for request, text, score in zip(batch, texts, _sequence_scores(model, output, settings), strict=True):
            generated = text.replace("<pad>", "").replace("<s>", "").replace("</s>", "").strip()
            prompt_input = (
                request["prompt"][len(request["task"]) :]
                if request["prompt"].startswith(request["task"])
                else None
            )
            parsed = parse(
                request["task"],
                generated,
                request["width"],
                request["height"],
                prompt_text=prompt_input or None,
            )
            for ordinal, row in enumerate(parsed.rows):
                labelled = {
                    **row,
                    "image_id": request["image_id"],
                    "score": score,
                    "source": source,
                    "iteration": iteration,
                    "status": "raw",
                }
                rows.append({**labelled, "label_id": label_id_for(labelled, ordinal)})
            problems.extend(
                {
                    "image_id": request["image_id"],
                    "task": request["task"],
                    "generated": generated,
                    "problem": problem,
                }
                for problem in parsed.problems
            )
    return Generated(labels=frame("labels", rows), problems=pl.DataFrame(problems, schema=PROBLEMS_SCHEMA))


def _sequence_scores(model, output, settings: GenerationParams) -> list[float]:
    """A confidence per generated sequence: exp(mean token log-probability)."""
    if settings.num_beams > 1:
        return [math.exp(float(s)) for s in output.sequences_scores]
    transition = model.compute_transition_scores(output.sequences, output.scores, normalize_logits=True)
    generated = output.sequences[:, -transition.shape[1] :]
    pad = model.generation_config.pad_token_id
    mask = generated != pad if pad is not None else torch.ones_like(generated, dtype=torch.bool)
    mean = (transition.masked_fill(~mask, 0).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).tolist()
    return [math.exp(value) for value in mean]
