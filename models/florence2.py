"""The unified model: transformers' native Florence-2, in the sizes this project uses.

Florence-2 (paper section 3, Table 15) is a DaViT image encoder followed by a BART-like
encoder-decoder: the image becomes (size/32)^2 + 1 visual tokens (one per cell of the last
DaViT stage, plus their mean), projected to the text width and put where the prompt's
``<image>`` placeholders are; the decoder writes the answer text, location tokens included.
transformers implements it as ``Florence2ForConditionalGeneration``; this module only picks
its shape (``PRESETS``), builds its processor without torchvision, and saves and loads it.

The presets:

- ``micro``: for tests, seconds on a CPU;
- ``small``: the demo, trained on two CPU cores (about a second per step of 8 images);
- ``base`` and ``large``: the shapes of Florence-2-B (232M parameters) and Florence-2-L
  (771M) with Florence-2's vocabulary, to train on real hardware or to hold real weights.

``load_model`` reads any folder in transformers' native Florence-2 format, ours or real
Florence-2 weights a user has on disk; nothing here downloads anything.

Plain functions, no framework: this module knows nothing of Dagster or MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    BartConfig,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Florence2VisionConfig,
    PreTrainedTokenizerBase,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from models.tokenizer import corpus_texts, train_tokenizer

# the DaViT encoder halves the image four times after a stride-4 stem: 32 pixels per token
IMAGE_STRIDE = 32
# BART's learned positions: the longest prompt (image tokens included) or answer
MAX_TEXT_POSITIONS = 1024


@dataclass(frozen=True)
class Preset:
    """One size of the model: the DaViT image encoder and the BART-like text transformer."""

    image_size: int  # images are resized to image_size x image_size pixels
    # DaViT, per stage (4 stages, each at half the resolution of the one before)
    embed_dims: tuple[int, ...]  # channels
    depths: tuple[int, ...]  # blocks, each a spatial (window) then a channel attention block
    num_heads: tuple[int, ...]  # heads in both attentions; Florence-2 uses channels / 32
    window_size: int  # side of the spatial attention windows, in tokens of the stage
    # the encoder-decoder
    d_model: int
    encoder_layers: int
    decoder_layers: int
    attention_heads: int
    ffn_dim: int

    @property
    def image_tokens(self) -> int:
        """Visual tokens per image: one per cell of the last stage, plus their mean."""
        return (self.image_size // IMAGE_STRIDE) ** 2 + 1


PRESETS: dict[str, Preset] = {
    # stage grids 56/28/14/7 at 224 px: window 7 tiles each without padding
    "micro": Preset(
        image_size=224,
        embed_dims=(32, 64, 128, 256),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 4, 8),
        window_size=7,
        d_model=256,
        encoder_layers=2,
        decoder_layers=2,
        attention_heads=4,
        ffn_dim=1024,
    ),
    # measured at about 1.1 s per training step (batch 8, 64-token targets, AdamW) on 2 CPU
    # threads; stage grids 64/32/16/8 at 256 px: window 8
    "small": Preset(
        image_size=256,
        embed_dims=(48, 96, 192, 384),
        depths=(1, 1, 2, 1),
        num_heads=(2, 3, 6, 12),
        window_size=8,
        d_model=384,
        encoder_layers=3,
        decoder_layers=3,
        attention_heads=6,
        ffn_dim=1536,
    ),
    # Florence-2-B (paper Table 15; the released config): stage grids 192/96/48/24 at 768 px
    "base": Preset(
        image_size=768,
        embed_dims=(128, 256, 512, 1024),
        depths=(1, 1, 9, 1),
        num_heads=(4, 8, 16, 32),
        window_size=12,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        attention_heads=12,
        ffn_dim=3072,
    ),
    # Florence-2-L
    "large": Preset(
        image_size=768,
        embed_dims=(256, 512, 1024, 2048),
        depths=(1, 1, 9, 1),
        num_heads=(8, 16, 32, 64),
        window_size=12,
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        attention_heads=16,
        ffn_dim=4096,
    ),
}

# what Florence2Processor.post_process_generation may parse (it refuses a task whose kind
# is missing here); the OCR pattern and the phrases grounding never keeps are Florence-2's
POST_PROCESSOR_CONFIG: dict[str, dict] = {
    "pure_text": {},
    "ocr": {
        "PATTERN": r"(.+?)" + r"<loc_(\d+)>" * 8,
        "AREA_THRESHOLD": 0.0,
    },
    "phrase_grounding": {
        "banned_grounding_tokens": [
            "it",
            "its",
            "they",
            "them",
            "their",
            "this",
            "that",
            "these",
            "those",
            "the image",
            "image",
            "images",
            "the",
            "a",
            "an",
            "a group",
            "other objects",
        ],
    },
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {list(PRESETS)}")
    return PRESETS[name]


def build_config(
    preset: str,
    vocab_size: int,
    *,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    image_token_id: int,
    dropout: float = 0.1,
) -> Florence2Config:
    """The Florence-2 config of ``preset`` for a tokenizer of ``vocab_size`` tokens.

    ``dropout`` is the text transformer's dropout and the image encoder's stochastic depth
    (both 0.1 in Florence-2); 0 lets a model memorise, as a test of learning does.

    The decoder starts from ``eos_token_id``, as BART and Florence-2 do: a target framed
    ``<s> text </s>`` is read as ``</s> <s> text`` and predicted as ``<s> text </s>``.
    """
    shape = _preset(preset)
    vision = Florence2VisionConfig(
        embed_dim=list(shape.embed_dims),
        depths=list(shape.depths),
        num_heads=list(shape.num_heads),
        num_groups=list(shape.num_heads),  # channel-attention groups, as many as heads
        window_size=shape.window_size,
        # the visual tokens enter the text encoder beside the prompt's: same width
        projection_dim=shape.d_model,
        drop_path_rate=dropout,
    )
    text = BartConfig(
        vocab_size=vocab_size,
        d_model=shape.d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.attention_heads,
        decoder_attention_heads=shape.attention_heads,
        encoder_ffn_dim=shape.ffn_dim,
        decoder_ffn_dim=shape.ffn_dim,
        max_position_embeddings=MAX_TEXT_POSITIONS,
        dropout=dropout,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=eos_token_id,
    )
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)


def build_model(
    preset: str, tokenizer: PreTrainedTokenizerBase, dropout: float = 0.1
) -> Florence2ForConditionalGeneration:
    """A randomly initialised Florence-2 of ``preset``, sized and wired for ``tokenizer``
    (``dropout``: see ``build_config``).

    Build it under ``with torch.device("meta"):`` to count parameters without memory.
    """
    config = build_config(
        preset,
        len(tokenizer),  # added tokens (tasks, locations) included
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        image_token_id=tokenizer.image_token_id,
        dropout=dropout,
    )
    return Florence2ForConditionalGeneration(config)


def build_processor(tokenizer: PreTrainedTokenizerBase, preset: str) -> Florence2Processor:
    """The processor for ``preset``: images to pixels, prompts to ids, answers to results.

    Images are resized (bicubic, aspect ratio not kept) to the preset's square size and
    normalised with ImageNet's mean and std, as Florence-2's own processor does; the PIL
    image processor needs no torchvision. ``processor(images=..., text=...)`` rewrites task
    tokens into Florence-2's prompts ("<OD>" -> "Locate the objects with category name in
    the image.") and puts ``image_tokens`` ``<image>`` placeholders before each.
    """
    shape = _preset(preset)
    image_processor = CLIPImageProcessorPil(
        size={"height": shape.image_size, "width": shape.image_size},
        do_center_crop=False,  # CLIP crops to a square; we resize the whole image instead
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        # the processor writes this many <image> placeholders; the model checks the count
        image_seq_length=shape.image_tokens,
    )
    return Florence2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        post_processor_config=POST_PROCESSOR_CONFIG,
    )


def save_model(
    model: Florence2ForConditionalGeneration, processor: Florence2Processor, folder: str | Path
) -> None:
    """Write the model (config and safetensors weights) and its processor to ``folder``."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def load_model(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[Florence2ForConditionalGeneration, Florence2Processor]:
    """The model and processor saved in ``folder``, the model on ``device`` in eval mode.

    ``folder`` is any checkpoint in transformers' native Florence-2 format: one that
    ``save_model`` wrote, or real Florence-2 weights a user keeps on disk, to fine-tune
    (call ``model.train()``) or to use as a specialist. Only that folder is read: a name
    that is not a folder raises instead of being looked up on a model hub.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}: models load from local folders only")
    processor = Florence2Processor.from_pretrained(folder, local_files_only=True)
    # float32 whatever the checkpoint was saved in: training and CPU inference want it
    model = Florence2ForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, dtype=torch.float32
    )
    return model.to(device).eval(), processor


def initial_model(
    preset: str,
    corpus_files: Sequence[str | Path],
    *,
    vocab_size: int,
    min_frequency: int,
    init_from: str | Path | None = None,
    seed: int = 0,
) -> tuple[Florence2ForConditionalGeneration, Florence2Processor]:
    """The model an iteration trains, in train mode on the CPU.

    With ``init_from`` (a local folder of Florence-2 weights: real ones, or an earlier model of
    ours) that model and its own processor, to fine-tune. Otherwise a new model of ``preset``,
    initialised from ``seed``, with a tokenizer trained on the text of ``corpus_files``.
    """
    if init_from is not None:
        model, processor = load_model(init_from)
        return model.train(), processor
    tokenizer = train_tokenizer(
        corpus_texts(corpus_files), vocab_size=vocab_size, min_frequency=min_frequency
    )
    torch.manual_seed(seed)
    return build_model(preset, tokenizer).train(), build_processor(tokenizer, preset)


def count_parameters(model: torch.nn.Module) -> int:
    """The number of parameters in ``model``; tied weights (embeddings, lm_head) count once."""
    return sum(parameter.numel() for parameter in model.parameters())
