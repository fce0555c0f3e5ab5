"""Benchmark: training steps and batched generation of the unified model (Florence-2 presets).

Run from the repository root:

    python bench/train_step.py [--presets micro,small] [--steps 10] [--batch-size 8]
                               [--max-new-tokens 64] [--generate-repeats 3] [--peak-tflops 989]
                               [--threads N] [--seed 0]

Everything is synthetic and made in memory (no file is read or written): a byte-level BPE
tokenizer (``models.tokenizer.train_tokenizer``) trained on a few hundred Florence-2 ``<OD>``
targets ("red car<loc_..><loc_..><loc_..><loc_..>small dog<loc_..>..."), seeded random-noise
RGB images at each preset's image size, the prompt ``<OD>`` and targets cut to 64 tokens
(``models.training.Collator``, ``max_target_tokens=64``), so every example has the same length
and no batch holds padding. For each preset:

* training: ``--steps`` timed steps after 2 warm-up steps, each one step of
  ``models.training.train`` on one pre-collated batch of ``--batch-size`` examples: teacher-forced
  forward (bf16 autocast on CUDA), ``per_example_loss``, backward, gradient clipping, an
  AdamW step at ``learning_rate_at``. Collating (image resizing, tokenizing) is done once
  before the timings: ``train`` does it in the data loader, beside the model;
* generation: ``model.generate`` on the same batch as ``models.inference.generate_labels``
  calls it (float32 weights, no autocast, greedy, scores returned), forced to write
  ``--max-new-tokens`` tokens (``min_new_tokens``), as an untrained model would otherwise stop
  at once; best of ``--generate-repeats`` after one warm-up.

On CUDA (used when available; timings are bracketed by ``torch.cuda.synchronize()``) the
default preset is ``base`` and the table also gives the model FLOPs utilisation (MFU) against
``--peak-tflops`` (989: H100 SXM dense bf16). On CPU the defaults are ``micro,small`` and
torch uses every core (``--threads``: fewer, when other work shares the machine; more threads
than free cores slow torch down many times over).

Baseline, in the same run: the same training step of the smallest preset of the run at batch
size 1, repeated ``--batch-size`` times over the same examples (one optimizer step per
example: unbatched). The last line is ``ratio: X``, where X = batched training images/s /
unbatched training images/s of that preset (higher means batching pays more).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from models.florence2 import PRESETS, build_model, build_processor, count_parameters  # noqa: E402
from models.tasks import LOC_BINS, OD, loc_token  # noqa: E402
from models.tokenizer import train_tokenizer  # noqa: E402
from models.training import (  # noqa: E402
    IGNORE_INDEX,
    Collator,
    learning_rate_at,
    per_example_loss,
    teacher_forced_logits,
)
from relabel.config import TrainParams  # noqa: E402

TARGET_TOKENS = 64
WARMUP_STEPS = 2
TOKENIZER_TEXTS = 400
COLOURS = ("red", "blue", "green", "white", "black", "yellow", "small", "large", "old", "striped")
THINGS = ("car", "dog", "cat", "person", "bicycle", "chair", "cup", "bottle", "bus", "bird", "sign", "tree")


def od_target(rng: np.random.Generator, objects: int) -> str:
    """A Florence-2 ``<OD>`` target: "red car<loc x4>small dog<loc x4>..."."""
    parts = []
    for _ in range(objects):
        x0, y0 = rng.integers(0, LOC_BINS - 1, 2)
        x1, y1 = rng.integers(x0 + 1, LOC_BINS), rng.integers(y0 + 1, LOC_BINS)
        name = f"{COLOURS[rng.integers(len(COLOURS))]} {THINGS[rng.integers(len(THINGS))]}"
        parts.append(name + "".join(loc_token(int(k)) for k in (x0, y0, x1, y1)))
    return "".join(parts)


def examples(rng: np.random.Generator, n: int, image_size: int) -> list[dict]:
    """``n`` examples: a random-noise image, the ``<OD>`` prompt and a target of at least
    ``TARGET_TOKENS`` tokens (about 6 tokens per object), cut to that length by the collator."""
    return [
        {
            "image": Image.fromarray(
                rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8), "RGB"
            ),
            "task": OD,
            "prompt": OD,
            "target": od_target(rng, objects=16),
        }
        for _ in range(n)
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_seconds(
    model, optimizer, batches: list[dict], settings: TrainParams, device: torch.device, steps: int
) -> float:
    """Seconds for ``steps`` passes over ``batches`` (one optimizer step per batch), after
    ``WARMUP_STEPS`` passes; the step is ``models.training.train``'s."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()

    def step(index: int) -> None:
        for batch in batches:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(index, settings)
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            with autocast:
                logits = teacher_forced_logits(model, model.config, inputs, batch["labels"])
            loss = per_example_loss(logits, batch["labels"]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for index in range(WARMUP_STEPS):
        step(index)
    synchronize(device)
    start = time.perf_counter()
    for index in range(WARMUP_STEPS, WARMUP_STEPS + steps):
        step(index)
    synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def generate_seconds(model, inputs: dict, max_new_tokens: int, repeats: int, device: torch.device) -> float:
    """Best-of-``repeats`` seconds of one batched greedy generation, as ``generate_labels``
    calls it, forced to ``max_new_tokens`` tokens."""
    model.eval()
    best = np.inf
    for repeat in range(repeats + 1):  # the first is a warm-up
        synchronize(device)
        start = time.perf_counter()
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            num_beams=1,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
        synchronize(device)
        if repeat:
            best = min(best, time.perf_counter() - start)
    generated = output.sequences.shape[1] - 1  # the decoder start token is not generated
    assert generated == max_new_tokens, f"generated {generated} tokens, not {max_new_tokens}"
    return best


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets",
        default="base" if cuda else "micro,small",
        help="comma-separated presets (default: base on CUDA, micro,small on CPU)",
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--generate-repeats", type=int, default=3)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the device's peak dense bf16 TFLOP/s, for MFU (989: H100 SXM)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="CPU only: torch threads (default: every core; fewer when the machine is busy)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in presets if name not in PRESETS]
    if unknown:
        parser.error(f"unknown presets {unknown}; known: {list(PRESETS)}")
    presets.sort(key=list(PRESETS).index)  # smallest first: the baseline is presets[0]

    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        device_name = f"cuda ({torch.cuda.get_device_name(device)}), bf16 autocast"
    else:
        torch.set_num_threads(args.threads)
        device_name = f"cpu ({torch.get_num_threads()} threads), float32"
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    tokenizer = train_tokenizer([od_target(rng, objects=8) for _ in range(TOKENIZER_TEXTS)], vocab_size=1000)
    print(
        f"device {device_name}; torch {torch.__version__}; tokenizer of {len(tokenizer):,} tokens "
        f"trained on {TOKENIZER_TEXTS} synthetic <OD> targets in {time.perf_counter() - start:.1f} s; "
        f"batch {args.batch_size}, {args.steps} timed steps after {WARMUP_STEPS} warm-up, "
        f"targets cut to {TARGET_TOKENS} tokens, generation {args.max_new_tokens} new tokens (greedy)"
    )

    settings = TrainParams(
        batch_size=args.batch_size,
        max_target_tokens=TARGET_TOKENS,
        steps=WARMUP_STEPS + args.steps,
        warmup_steps=1,
    )
    rows, baseline = [], None
    for name in presets:
        preset = PRESETS[name]
        torch.manual_seed(args.seed)
        model = build_model(name, tokenizer).to(device)
        parameters = count_parameters(model)
        processor = build_processor(tokenizer, name)
        collate = Collator(processor, settings.max_target_tokens)
        batch_examples = examples(np.random.default_rng([args.seed, 1]), args.batch_size, preset.image_size)
        inputs, _ = collate(batch_examples)
        inputs = {key: value.to(device) for key, value in inputs.items()}
        target_tokens = int((inputs["labels"] != IGNORE_INDEX).sum())
        input_tokens = int(inputs["attention_mask"].sum())  # image placeholders + prompt, per batch
        tokens_per_example = (input_tokens + target_tokens) / args.batch_size
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )

        seconds = train_seconds(model, optimizer, [inputs], settings, device, args.steps)
        per_step = seconds / args.steps
        images_per_second = args.batch_size / per_step
        row = {
            "preset": name,
            "parameters": parameters,
            "per_step": per_step,
            "images": images_per_second,
            "target_tokens": target_tokens / per_step,
            "tokens_per_example": tokens_per_example,
            "image_tokens": preset.image_tokens,
            "prompt_tokens": input_tokens / args.batch_size - preset.image_tokens,
            "mfu": None,
        }
        if cuda:
            # the standard 6N approximation: 6 FLOPs (2 forward, 4 backward) per parameter per
            # token processed, with tokens = image tokens + prompt tokens + target tokens of each
            # example. It ignores attention FLOPs (quadratic in sequence length) and is rough
            # for this encoder-decoder: an encoder token does not pass the decoder's weights nor
            # a target token the encoder's, while the DaViT's weights run over patch grids far
            # larger than the image tokens it hands on
            achieved = 6 * parameters * tokens_per_example * images_per_second
            row["mfu"] = achieved / (args.peak_tflops * 1e12)

        if baseline is None:  # the smallest preset: the unbatched baseline, from the same examples
            singles = []
            for example in batch_examples:
                single, _ = collate([example])
                singles.append({key: value.to(device) for key, value in single.items()})
            torch.manual_seed(args.seed)
            single_model = build_model(name, tokenizer).to(device)
            single_optimizer = torch.optim.AdamW(
                single_model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
            )
            single_seconds = train_seconds(
                single_model, single_optimizer, singles, settings, device, args.steps
            )
            baseline = {
                "preset": name,
                "per_step": single_seconds / args.steps,
                "images": args.batch_size * args.steps / single_seconds,
            }
            del single_model, single_optimizer, singles

        generation_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        generation = generate_seconds(
            model, generation_inputs, args.max_new_tokens, args.generate_repeats, device
        )
        row["generate_images"] = args.batch_size / generation
        row["generate_tokens"] = args.batch_size * args.max_new_tokens / generation
        rows.append(row)
        del model, optimizer, inputs, generation_inputs
        if cuda:
            torch.cuda.empty_cache()

    print()
    print("training (forward + backward + AdamW), then batched greedy generation:")
    header = (
        f"{'preset':<8}{'params':>12}{'tokens/ex':>11}{'s/step':>10}{'images/s':>11}"
        f"{'target tok/s':>14}{'MFU (6N)':>10}{'gen images/s':>14}{'gen tok/s':>11}"
    )
    print(header)
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        print(
            f"{row['preset']:<8}{row['parameters']:>12,}{row['tokens_per_example']:>11.0f}{row['per_step']:>10.3f}"
            f"{row['images']:>11.1f}{row['target_tokens']:>14,.0f}{mfu:>10}"
            f"{row['generate_images']:>14.1f}{row['generate_tokens']:>11,.0f}"
        )
    print(
        "tokens/ex = image tokens + prompt tokens + target tokens per example ("
        + "; ".join(
            f"{r['preset']}: {r['image_tokens']} + {r['prompt_tokens']:.0f} + "
            f"{r['tokens_per_example'] - r['image_tokens'] - r['prompt_tokens']:.0f}"
            for r in rows
        )
        + ")"
    )
    if cuda:
        print(
            f"MFU = 6 x params x tokens/s / peak ({args.peak_tflops:g} TFLOP/s bf16); attention FLOPs ignored"
        )
    first = rows[0]
    print()
    print(
        f"baseline ({baseline['preset']}): the same training step at batch size 1, "
        f"repeated {args.batch_size} times per step: {baseline['per_step']:.3f} s "
        f"per {args.batch_size} images, {baseline['images']:.1f} images/s"
    )
    print(
        f"ratio = batched images/s / unbatched images/s of {baseline['preset']} at "
        f"batch size {args.batch_size}: {first['images']:.1f} / {baseline['images']:.1f}"
    )
    print(f"ratio: {first['images'] / baseline['images']:.2f}")


if __name__ == "__main__":
    main()
