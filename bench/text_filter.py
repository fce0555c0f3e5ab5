"""Benchmark: relabel.text_parsing.parse_texts against a plain spaCy nlp.pipe over the same texts.

Run from the repository root:

    python bench/text_filter.py [--texts 20000] [--batch-size 256] [--seed 0]

Builds ``--texts`` captions (brief, detailed and more detailed, in the proportions the world
makes them) from the embedded world's caption generator: scenes are composed in memory (no
image is written) and each is captioned several times with different seeds, which varies
colours' order, settings and phrasing; the texts are then shuffled so every batch mixes the
three granularities. Both sides parse the same texts in the same run:

* spaCy: ``spacy.load(SPACY_MODEL)`` with every component, ``list(nlp.pipe(texts))``;
* relabel: ``parse_texts`` with ``load_parser()`` (ner, lemmatizer and senter left out),
  building the frame of semantic elements and complexities included.

Prints a table and ends with ``ratio: X``, where X is relabel's throughput divided by spaCy's
(higher means the filter's parsing is faster).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spacy  # noqa: E402

from relabel.config import WorldParams  # noqa: E402
from relabel.text_parsing import SPACY_MODEL, load_parser, parse_texts, text_statistics  # noqa: E402
from relabel.world.captions import scene_captions  # noqa: E402
from relabel.world.scene import compose_scene  # noqa: E402

# composing a scene draws it (about 10 ms); captioning it again costs far less, so each scene
# is captioned this many times (three captions each time). Some texts repeat (brief captions
# of one scene most of all); that does not flatter either side, as spaCy keeps no parse
# between docs, only its vocabulary, which the warm-up has filled
CAPTIONINGS_PER_SCENE = 5


def generate(n_texts: int, seed: int) -> pl.DataFrame:
    """``n_texts`` world captions (label_id, task, text), shuffled with ``seed``."""
    params = WorldParams()
    per_scene = 3 * CAPTIONINGS_PER_SCENE
    rows = []
    for index in range(-(-n_texts // per_scene)):
        _, scene = compose_scene(np.random.default_rng([seed, 0, index]), params, index, "curated", "x.png")
        for draw in range(CAPTIONINGS_PER_SCENE):
            for caption in scene_captions(scene, np.random.default_rng([seed, 1, index, draw])):
                rows.append((caption.task, caption.text))
    order = np.random.default_rng([seed, 2]).permutation(len(rows))[:n_texts]
    return pl.DataFrame(
        {
            "label_id": [f"t{k:07d}" for k in range(len(order))],
            "task": [rows[k][0] for k in order],
            "text": [rows[k][1] for k in order],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    texts = generate(args.texts, args.seed)
    strings = texts["text"].to_list()
    n_tokens = sum(len(text.split()) for text in strings)
    print(
        f"{texts.height:,} texts ({texts['text'].n_unique():,} distinct, {n_tokens:,} words) "
        f"from {-(-args.texts // (3 * CAPTIONINGS_PER_SCENE)):,} world scenes in "
        f"{time.perf_counter() - start:.1f} s; model {SPACY_MODEL}, spacy {spacy.__version__}"
    )

    full = spacy.load(SPACY_MODEL)
    filtering = load_parser()
    # warm-up: the first batches fill the vocabulary and allocate the models' buffers
    warm = strings[: min(len(strings), 2 * args.batch_size)]
    list(full.pipe(warm, batch_size=args.batch_size))
    parse_texts(texts.head(len(warm)), filtering, batch_size=args.batch_size)

    start = time.perf_counter()
    docs = list(full.pipe(strings, batch_size=args.batch_size))
    spacy_seconds = time.perf_counter() - start
    start = time.perf_counter()
    parses = parse_texts(texts, filtering, batch_size=args.batch_size)
    relabel_seconds = time.perf_counter() - start
    assert len(docs) == parses.height == texts.height

    print()
    print(f"{'implementation':<44}{'seconds':>10}{'texts/s':>12}")
    print(
        f"{'spacy nlp.pipe, all components':<44}{spacy_seconds:>10.3f}{texts.height / spacy_seconds:>12,.0f}"
    )
    print(
        f"{'relabel parse_texts (load_parser)':<44}{relabel_seconds:>10.3f}"
        f"{texts.height / relabel_seconds:>12,.0f}"
    )
    print(f"components: spacy {full.pipe_names}, relabel {filtering.pipe_names}")
    print()
    print("table 3 of these texts:")
    with pl.Config(
        tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_cols=-1, tbl_width_chars=220
    ):
        table = text_statistics(parses.with_columns(task=texts["task"]))
        print(table.with_columns(pl.selectors.starts_with("avg_").round(2)))
    print(f"ratio: {spacy_seconds / relabel_seconds:.2f}")


if __name__ == "__main__":
    main()
