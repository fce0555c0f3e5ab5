"""The unified model's tokenizer, trained from scratch on the corpus text.

Florence-2 uses BART's tokenizer (byte-level BPE) extended with location tokens (paper
section 3). We have no BART here, and our text is the embedded world's captions and signs,
so we train a byte-level BPE of the same kind on that text and extend it the same way:

- BART's special tokens, with BART's ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3;
- ``<image>``, the placeholder the processor repeats once per image token (special: it is
  replaced by image features and never generated);
- every token of ``models.tasks.VOCABULARY`` (task tokens, ``<sep>``, ``<loc_0>``..
  ``<loc_999>``) as an ordinary added token: one id each, never split, and kept by
  ``decode(..., skip_special_tokens=True)`` (special tokens would be dropped there, and a
  generated box would lose its coordinates).

Byte-level BPE can write any string (unknown characters fall back to bytes), so decoding
what was encoded gives back the same text exactly, location tokens included.

Plain functions, no framework: this module knows nothing of Dagster or MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import polars as pl
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from models.tasks import VOCABULARY

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
IMAGE_TOKEN = "<image>"
# the order fixes the ids: 0..3 as in BART, so configs and checkpoints read the same way
SPECIAL_TOKENS = (BOS, PAD, EOS, UNK, IMAGE_TOKEN)

# the longest sequence the text transformer embeds (BART's learned positions)
MAX_LENGTH = 1024


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, extended with Florence-2's tokens.

    Parameters
    ----------
    texts
        The corpus text (captions, OCR lines, category names), read once.
    vocab_size
        The most BPE tokens to learn, the 256 bytes and the special tokens included; a small
        corpus stops earlier, when no pair occurs ``min_frequency`` times. The task and
        location tokens come on top: ``len(tokenizer)`` is the model's vocabulary size.
    min_frequency
        How often a pair must occur to be merged.

    Returns
    -------
    A ``PreTrainedTokenizerFast`` that frames each sequence as ``<s> ... </s>`` and knows
    ``<image>`` as ``tokenizer.image_token`` / ``tokenizer.image_token_id`` (what
    ``Florence2Processor`` reads). The same texts in the same order give the same tokenizer.

    >>> tokenizer = train_tokenizer(["a red car", "car park"] * 10)
    >>> tokenizer.convert_ids_to_tokens(tokenizer("car<loc_7>").input_ids)
    ['<s>', 'car', '<loc_7>', '</s>']
    """
    # BART's pre-tokenizer: no prefix space, so "car" at the start of a target stays "car"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # all 256 bytes, even those the corpus lacks: any text can be encoded
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} {EOS} $B {EOS}",  # BART's pair framing
        special_tokens=[(token, bpe.token_to_id(token)) for token in (BOS, EOS)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        image_token=IMAGE_TOKEN,  # a named extra special token: saved and loaded with the rest
        model_max_length=MAX_LENGTH,
    )
    tokenizer.add_tokens(list(VOCABULARY))
    return tokenizer


# the tokens every tokenizer gets whole (tasks, <sep>, locations): not text to learn merges from
_VOCABULARY_TOKENS = re.compile(
    "(?:" + "|".join(re.escape(token) for token in sorted(VOCABULARY, key=len, reverse=True)) + ")+"
)


def corpus_texts(files: Sequence[str | Path]) -> Iterator[str]:
    """The text of every prompt and target of the corpus parquet files, in file and row order,
    with each run of task, ``<sep>`` and location tokens made one space (``train_tokenizer``
    adds those whole), one string per non-empty text."""
    for path in files:
        rows = pl.read_parquet(path, columns=["prompt", "target"])
        for column in ("prompt", "target"):
            for text in rows[column].drop_nulls():
                plain = _VOCABULARY_TOKENS.sub(" ", text).strip()
                if plain:
                    yield plain
