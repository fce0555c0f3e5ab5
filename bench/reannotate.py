"""Benchmark: batched re-annotation, as phase 4 runs it (``models.inference.generate_labels``).

Run from the repository root:

    python bench/reannotate.py [--preset micro] [--images 24] [--batch-size 16]
                               [--max-new-tokens 32] [--threads N] [--seed 0]

Re-annotation asks the iteration's model every task about every training image; each request
is decoded from its image file, preprocessed, generated (greedy, with scores) and parsed back
into label rows. Here the requests are real files and real prompts: ``--images`` seeded noise
images written as PNG to a temporary folder, asked every prompt-free task of
``models.inference.PROMPT_FREE_TASKS`` (8 per image). The model is a new one of ``--preset``
(seeded; its tokenizer trained on synthetic ``<OD>`` targets as in ``train_step.py``): what it
writes is meaningless, but it is generated and parsed like a trained model's, up to
``--max-new-tokens`` tokens.

Baseline, in the same run: the same requests one at a time (``batch_size=1``), on the first
``--batch-size`` x 2 requests. The last line is ``ratio: X``, where X = batched requests/s /
unbatched requests/s (higher means batching the re-annotation pays more). On CUDA (used when
available) the default preset is ``base``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from train_step import TOKENIZER_TEXTS, od_target  # noqa: E402

from models.florence2 import build_model, build_processor, count_parameters  # noqa: E402
from models.inference import PROMPT_FREE_TASKS, generate_labels, requests_for  # noqa: E402
from models.tokenizer import train_tokenizer  # noqa: E402
from relabel.config import GenerationParams  # noqa: E402

WIDTH, HEIGHT = 320, 240


def timed_generation(
    model, processor, requests: pl.DataFrame, settings: GenerationParams, device: torch.device
) -> tuple[float, int, int]:
    """Seconds to label ``requests`` (after one warm-up batch), labels and problems written."""
    generate_labels(
        model, processor, requests.head(settings.batch_size), settings, source="bench", iteration=0
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = generate_labels(model, processor, requests, settings, source="bench", iteration=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result.labels.height, result.problems.height


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base" if cuda else "micro")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU only: torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    tokenizer = train_tokenizer([od_target(rng, objects=8) for _ in range(TOKENIZER_TEXTS)], vocab_size=1000)
    torch.manual_seed(args.seed)
    model = build_model(args.preset, tokenizer).to(device).eval()
    processor = build_processor(tokenizer, args.preset)

    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for index in range(args.images):
            path = Path(folder) / f"{index:04d}.png"
            Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB").save(path)
            rows.append(
                {"image_id": f"{index:04d}", "image_path": str(path), "width": WIDTH, "height": HEIGHT}
            )
        requests = requests_for(pl.DataFrame(rows), list(PROMPT_FREE_TASKS)).sort("image_id", "task")
        batched = GenerationParams(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        single = GenerationParams(batch_size=1, max_new_tokens=args.max_new_tokens)
        few = requests.head(args.batch_size * 2)
        single_seconds, _, _ = timed_generation(model, processor, few, single, device)
        batched_seconds, labels, problems = timed_generation(model, processor, requests, batched, device)

    device_name = (
        f"cuda ({torch.cuda.get_device_name(device)})" if cuda else f"cpu ({torch.get_num_threads()} threads)"
    )
    unbatched_rate = few.height / single_seconds
    batched_rate = requests.height / batched_seconds
    print(
        f"device {device_name}; torch {torch.__version__}; preset {args.preset} "
        f"({count_parameters(model):,} parameters); {args.images} images x {len(PROMPT_FREE_TASKS)} "
        f"prompt-free tasks = {requests.height} requests; up to {args.max_new_tokens} new tokens (greedy)"
    )
    print(f"{'run':<28}{'requests':>9}{'seconds':>9}{'requests/s':>12}")
    print(f"{'one request at a time':<28}{few.height:>9}{single_seconds:>9.2f}{unbatched_rate:>12.2f}")
    print(
        f"{f'batches of {args.batch_size}':<28}{requests.height:>9}"
        f"{batched_seconds:>9.2f}{batched_rate:>12.2f}"
    )
    print(
        f"batched run: {labels} label rows parsed, {problems} generations not readable (an untrained model)"
    )
    print(f"ratio: {batched_rate / unbatched_rate:.2f}")


if __name__ == "__main__":
    main()
