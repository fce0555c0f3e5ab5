"""``torchrun -m pipelines.train``: train an iteration's unified model outside Dagster, in one
process or in each of ``torchrun``'s (DDP), on the corpus the corpus asset wrote.

The training loop is ``models.training.train``; this is the command around it, which knows
where the project keeps the corpus (``resources.layout``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from models.training import train
from relabel.config import load_params, resolve
from resources.layout import CORPUS_EXAMPLES, frames_dir, iterations_in


def corpus_folder(data_dir: Path, iteration: int | None = None) -> Path:
    """Where the corpus asset wrote iteration ``iteration``'s shards (default: the newest
    iteration's)."""
    if iteration is None:
        found = iterations_in(frames_dir(CORPUS_EXAMPLES, data_dir))
        if not found:
            raise SystemExit(
                f"no corpus in {frames_dir(CORPUS_EXAMPLES, data_dir)}: materialize the corpus phase "
                "first (relabel materialize corpus)"
            )
        iteration = int(found[-1])
    return frames_dir(CORPUS_EXAMPLES, data_dir, iteration)


def main(argv: Sequence[str] | None = None) -> None:
    """Train the model of params.yaml ``model:`` on the corpus, in this process or in each of
    ``torchrun``'s; rank 0 writes the model folder ``--out/model`` and prints the result."""
    from models.florence2 import initial_model, save_model

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--params", default="params.yaml", help="the project's params.yaml (its folder is the project root)"
    )
    parser.add_argument(
        "--corpus",
        help=("folder of corpus parquet files (default: the iteration's, where the corpus asset wrote it)"),
    )
    parser.add_argument(
        "--iteration", type=int, help="the iteration whose corpus to train on (default: the newest)"
    )
    parser.add_argument("--out", required=True, help="folder for checkpoints (resumed from) and the model")
    args = parser.parse_args(argv)
    root = Path(args.params).resolve().parent
    params = load_params(args.params)
    data_dir = resolve(root, params.data_dir)
    folder = Path(args.corpus) if args.corpus else corpus_folder(data_dir, args.iteration)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise SystemExit(f"no corpus parquet files in {folder}")
    model_params = params.model
    model, processor = initial_model(
        model_params.preset,
        files,
        vocab_size=model_params.tokenizer.vocab_size,
        min_frequency=model_params.tokenizer.min_frequency,
        init_from=resolve(root, model_params.init_from) if model_params.init_from else None,
        seed=model_params.train.seed,
    )
    result = train(
        model,
        processor,
        files,
        model_params.train,
        args.out,
        image_root=data_dir,
        progress=True,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        save_model(model, processor, Path(args.out) / "model")
        print(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    main()
