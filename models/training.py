"""Training the unified model on the corpus: one cross-entropy loss over every task.

The loop is plain PyTorch, in the order it runs:

1. ``CorpusStream`` streams the corpus parquet files (``models.corpus``): rows are spread
   over ranks and data-loader workers by row number, kept with a probability proportional to
   their task's mixing weight, shuffled in a buffer, and their images decoded in the worker
   processes.
2. ``Collator`` turns a batch into model inputs with the processor (image pixels, prompt
   ids) and target ids (padding masked with -100).
3. ``train`` runs AdamW with a linear warm-up and a cosine decay, gradient accumulation,
   bf16 autocast on CUDA, DistributedDataParallel when started by ``torchrun`` (one process
   per GPU), a checkpoint every ``checkpoint_every`` steps that ``train`` resumes from, and
   reports every step's loss, learning rate, per-task loss and throughput to ``callback``.

How to train is ``relabel.config.TrainParams``: params.yaml's ``model.train``, where its
defaults live. No Dagster or MLflow here: the caller decides what to do with the metrics. The
Dagster asset trains in one process; on several GPUs, ``pipelines.train`` runs this loop under
``torchrun`` with the same settings (params.yaml ``model:``)::

    torchrun --nproc_per_node=8 -m pipelines.train --params params.yaml --out data/model/multi-gpu
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from relabel.config import TrainParams

CHECKPOINT = "checkpoint"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class StepMetrics:
    """What one optimizer step reports to the caller."""

    step: int
    loss: float
    learning_rate: float
    task_losses: dict[str, float]
    examples: int
    target_tokens: int
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.target_tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int
    final_loss: float
    seconds: float


def learning_rate_at(step: int, settings: TrainParams) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``min_lr_ratio`` of it."""
    peak = settings.learning_rate
    if step < settings.warmup_steps:
        return peak * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = peak * settings.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class CorpusStream(IterableDataset):
    """An endless, shuffled stream of corpus examples with their images decoded.

    Every (rank, worker) pair reads the files and keeps the rows whose hash falls to it, so
    any number of files splits over any number of processes without overlap.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        settings: TrainParams,
        *,
        rank: int = 0,
        world_size: int = 1,
        image_root: str | Path | None = None,
    ) -> None:
        self.files = [str(f) for f in files]
        # a relative image path in the corpus is relative to this folder (the data directory)
        self.image_root = None if image_root is None else Path(image_root)
        self.settings = settings
        self.rank, self.world_size = rank, world_size
        weights = dict(settings.task_weights)
        self.keep = {task: weight / max(weights.values(), default=1.0) for task, weight in weights.items()}
        self.unweighted_keep = 1.0 / max(max(weights.values(), default=1.0), 1.0)

    def rows_of(self, path: str, consumer: int, consumers: int) -> list[dict]:
        """The rows of one corpus file that belong to ``consumer`` of ``consumers``."""
        rows = pl.read_parquet(path, columns=["image_path", "task", "prompt", "target"]).with_row_index("_n")
        # a hash, not the row number, picks the consumer: rows come in task patterns
        # (caption, boxes, caption, ...) that a stride would hand to one consumer each
        mine = (
            pl.concat_str(pl.lit(path), pl.col("_n").cast(pl.String)).hash(seed=0) % consumers
        ) == consumer
        return rows.filter(mine).drop("_n").to_dicts()

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        consumers, me = self.world_size * workers, self.rank * workers + worker_id
        rng = random.Random(f"{self.settings.seed}-{me}")
        buffer: list[dict] = []
        epoch = 0
        while True:
            order = list(self.files)
            random.Random(f"{self.settings.seed}-epoch{epoch}").shuffle(order)
            yielded = False
            for path in order:
                for row in self.rows_of(path, me, consumers):
                    if rng.random() >= self.keep.get(row["task"], self.unweighted_keep):
                        continue
                    buffer.append(row)
                    if len(buffer) >= self.settings.shuffle_buffer:
                        yield self._decoded(buffer.pop(rng.randrange(len(buffer))))
                        yielded = True
            while buffer:
                yield self._decoded(buffer.pop(rng.randrange(len(buffer))))
                yielded = True
            if not yielded:
                raise ValueError(
                    f"the corpus files {self.files} hold no example for consumer {me} of {consumers}"
                )
            epoch += 1

    def _decoded(self, row: dict) -> dict:
        from PIL import Image

        path = Path(row["image_path"])
        if self.image_root is not None and not path.is_absolute():
            path = self.image_root / path
        with Image.open(path) as image:
            return {
                "image": image.convert("RGB"),
                "task": row["task"],
                "prompt": row["prompt"],
                "target": row["target"],
            }


class Collator:
    """A list of decoded examples -> model inputs, target labels and their tasks."""

    def __init__(self, processor, max_target_tokens: int) -> None:
        self.processor = processor
        self.max_target_tokens = max_target_tokens

    def __call__(self, batch: list[dict]) -> tuple[dict[str, torch.Tensor], list[str]]:
        inputs = self.processor(
            text=[example["prompt"] for example in batch],
            images=[example["image"] for example in batch],
            return_tensors="pt",
            padding=True,
        )
        tokenizer = self.processor.tokenizer
        targets = tokenizer(
            [example["target"] for example in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_target_tokens,
        )
        labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, IGNORE_INDEX)
        return {**inputs, "labels": labels}, [example["task"] for example in batch]


def teacher_forced_logits(
    model: torch.nn.Module, config, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """The logits of every target position, the decoder reading the targets shifted right as
    ``model(..., labels=labels)`` would, but without the model's own mean loss, which
    ``per_example_loss`` replaces (it would be a second cross-entropy over the vocabulary).
    ``model`` may be wrapped (DDP); ``config`` is the Florence-2 config."""
    from transformers.models.florence2.modeling_florence2 import shift_tokens_right

    text = config.text_config
    decoder_input_ids = shift_tokens_right(labels, text.pad_token_id, text.decoder_start_token_id)
    return model(**inputs, decoder_input_ids=decoder_input_ids, use_cache=False).logits


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy of each example (padding ignored)."""
    token_loss = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counted = (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / counted


def train(
    model: torch.nn.Module,
    processor,
    corpus_files: Sequence[str | Path],
    settings: TrainParams,
    out_dir: str | Path,
    callback: Callable[[StepMetrics], None] | None = None,
    image_root: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` on the corpus files; resume from ``out_dir/checkpoint`` if present.
    ``progress`` shows a bar of the steps with the running loss (rank 0 only).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on its GPU with
    DistributedDataParallel; only rank 0 writes checkpoints and calls ``callback``.
    """
    out_dir = Path(out_dir)
    rank, world_size, device = _distributed_setup()
    torch.manual_seed(settings.seed)
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    start = _resume(model, optimizer, out_dir / CHECKPOINT, device)
    trained = model
    if world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    stream = CorpusStream(corpus_files, settings, rank=rank, world_size=world_size, image_root=image_root)
    loader = iter(
        DataLoader(
            stream,
            batch_size=settings.batch_size,
            collate_fn=Collator(processor, settings.max_target_tokens),
            num_workers=settings.num_workers,
            persistent_workers=settings.num_workers > 0,
            # spawned, not forked: polars (reading the corpus) and the tokenizers' thread pools
            # can deadlock in a forked child of a process that already used them
            multiprocessing_context="spawn" if settings.num_workers > 0 else None,
        )
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    trained.train()
    started, loss_value = time.perf_counter(), math.nan
    bar = tqdm(
        total=settings.steps, initial=start, desc="training", unit="step", disable=not progress or rank != 0
    )
    for step in range(start, settings.steps):
        step_started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, settings)
        task_losses: dict[str, list[float]] = defaultdict(list)
        total, examples, tokens = 0.0, 0, 0
        for _ in range(settings.grad_accumulation):
            inputs, tasks = next(loader)
            inputs = {name: value.to(device) for name, value in inputs.items()}
            labels = inputs.pop("labels")
            with autocast:
                logits = teacher_forced_logits(trained, model.config, inputs, labels)
            losses = per_example_loss(logits, labels)
            loss = losses.mean() / settings.grad_accumulation
            loss.backward()
            total += loss.item()
            examples += len(tasks)
            tokens += int((labels != IGNORE_INDEX).sum())
            for task, value in zip(tasks, losses.detach().tolist(), strict=True):
                task_losses[task].append(value)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = total
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        if rank == 0:
            if callback is not None:
                callback(
                    StepMetrics(
                        step=done,
                        loss=loss_value,
                        learning_rate=optimizer.param_groups[0]["lr"],
                        task_losses={task: sum(v) / len(v) for task, v in sorted(task_losses.items())},
                        examples=examples * world_size,
                        target_tokens=tokens * world_size,
                        seconds=time.perf_counter() - step_started,
                    )
                )
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                _checkpoint(model, processor, optimizer, out_dir / CHECKPOINT, done)
    bar.close()
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return TrainResult(
        steps=settings.steps, resumed_from=start, final_loss=loss_value, seconds=time.perf_counter() - started
    )


def _distributed_setup() -> tuple[int, int, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            return torch.distributed.get_rank(), world_size, torch.device("cuda", local_rank)
        return torch.distributed.get_rank(), world_size, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _checkpoint(model, processor, optimizer, folder: Path, step: int) -> None:
    """Weights (safetensors) and processor through save_pretrained, the optimizer state, and
    the step, written beside and renamed so a killed run never leaves half a checkpoint."""
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / "training_state.json").write_text(json.dumps({"step": step}))
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def _resume(model, optimizer, folder: Path, device: torch.device) -> int:
    state = folder / "training_state.json"
    if not state.is_file():
        return 0
    from safetensors.torch import load_file

    weights = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(shard), device=str(device)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # save_pretrained writes a tied weight (shared embeddings) once: only those may be missing
    loaded = {parameter.data_ptr() for name, parameter in model.named_parameters() if name in weights}
    untied = [
        name
        for name, parameter in model.named_parameters()
        if name in missing and parameter.data_ptr() not in loaded
    ]
    if unexpected or untied:
        raise ValueError(
            f"checkpoint {folder} does not fit the model: missing {untied}, unexpected {unexpected}"
        )
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    return int(json.loads(state.read_text())["step"])
