"""The hub-model adapters, run on tiny randomly initialised models that the tests build and save.

Nothing is downloaded: every model here is built from a configuration, its tokenizer (where it
needs one) from a handful of words, and saved with ``save_pretrained`` into a temporary folder
that the adapter then loads like any local model folder. Random weights say nonsense; these
tests check the plumbing (loading, batching, post-processing, geometry, scores, schema), not
quality. The Florence-2 model is the exception: a few dozen optimiser steps teach the micro
model one fixed answer per task prompt, so the parsing of real Florence-2 output strings into
boxes, quads and captions is checked against known values.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from models.specialists.base import ImageRef, Specialist
from models.specialists.registry import BuildContext, build_specialist
from relabel.labels import TASKS_BY_TYPE, check_schema, empty, frame

transformers = pytest.importorskip("transformers")

from models.specialists.hub import (  # noqa: E402  (after the importorskip)
    Florence2Specialist,
    HubCaptioner,
    HubObjectDetector,
    model_fingerprint,
)

CATEGORIES = ("circle", "square", "triangle")
SIZES = [(80, 50), (40, 70), (64, 64)]  # (width, height): landscape, portrait, square


# -- images and checks ---------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    # tiny models gain nothing from two threads, and on a busy machine the second thread's
    # spin-waiting makes each step ~20x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRef]:
    folder = tmp_path_factory.mktemp("images")
    refs = []
    for i, (width, height) in enumerate(SIZES):
        picture = Image.new("RGB", (width, height), (200 - 40 * i, 220, 240))
        draw = ImageDraw.Draw(picture)
        draw.ellipse([5, 5, width // 2, height // 2], fill=(220, 30, 30))
        draw.rectangle([width // 2, height // 2, width - 4, height - 4], fill=(30, 30, 200))
        path = folder / f"image{i}.png"
        picture.save(path)
        refs.append(ImageRef(image_id=f"img{i}", path=path, width=width, height=height))
    return refs


def context(tmp_path: Path, **kwargs: Any) -> BuildContext:
    return BuildContext(workdir=tmp_path, categories=kwargs.pop("categories", CATEGORIES), **kwargs)


def check_rows(specialist: Specialist, images: list[ImageRef], rows: list[list[dict]]) -> None:
    """Rows are well formed: one list per image, geometry inside the image, scores in [0, 1],
    and, with the columns the runner adds, they make a frame of the label-store schema."""
    assert isinstance(specialist, Specialist)
    assert len(rows) == len(images)
    full = []
    for image, image_rows in zip(images, rows, strict=True):
        for k, row in enumerate(image_rows):
            assert row["annotation_type"] in specialist.annotation_types
            assert row["task"] in TASKS_BY_TYPE[row["annotation_type"]]
            assert isinstance(row["text"], str) and row["text"]
            assert 0.0 <= row["score"] <= 1.0
            if row["annotation_type"] == "region_text":
                x0, y0, x1, y1 = row["box"]
                assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height, row["box"]
            for i, v in enumerate(row.get("quad") or []):
                assert 0 <= v <= (image.width if i % 2 == 0 else image.height)
            full.append(
                {
                    **row,
                    "label_id": f"{image.image_id}-{k}",
                    "image_id": image.image_id,
                    "source": f"{specialist.name}@{specialist.version}",
                    "iteration": 0,
                    "status": "raw",
                }
            )
    check_schema(frame("labels", full), "labels")


def one_by_one(specialist: Specialist, images: list[ImageRef]) -> list[list[dict]]:
    return [specialist.annotate([image], empty("labels"))[0] for image in images]


def assert_same(batched: list[list[dict]], single: list[list[dict]], tol: float = 1e-4) -> None:
    assert len(batched) == len(single)
    for rows_a, rows_b in zip(batched, single, strict=True):
        assert len(rows_a) == len(rows_b)
        for a, b in zip(rows_a, rows_b, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], float):
                    assert math.isclose(a[key], b[key], abs_tol=tol), key
                elif isinstance(a[key], list):
                    assert a[key] == pytest.approx(b[key], abs=tol * 100), key  # pixels
                else:
                    assert a[key] == b[key], key


# -- tiny models ---------------------------------------------------------------------------------


def bert_vocab(size: int = 0) -> dict[str, int]:
    """A WordPiece vocabulary of a few words; with ``size`` it is laid out like BERT's
    ([CLS] 101, [SEP] 102, "." 1012), which Grounding DINO's text masks look for."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    words += "a an the red blue green circle square triangle photo of on and with in".split()
    words += list("abcdefghijklmnopqrstuvwxyz.,?")
    if not size:
        return {w: i for i, w in enumerate(words)}
    slots = [f"[unused{i}]" for i in range(size)]
    fixed = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
    for word, index in fixed.items():
        slots[index] = word
    free = iter(i for i in range(200, size) if i not in fixed.values())
    for word in words:
        if word not in fixed:
            slots[next(free)] = word
    return {w: i for i, w in enumerate(slots)}


def tiny_resnet(out_features: list[str]) -> Any:
    return transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=out_features,
    )


def build_detr(folder: Path, fixed_size: bool = True) -> Path:
    config = transformers.DetrConfig(
        backbone_config=tiny_resnet(["stage4"]),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=12,
        id2label=dict(enumerate(CATEGORIES)),
        label2id={c: i for i, c in enumerate(CATEGORIES)},
    )
    torch.manual_seed(0)
    transformers.DetrForObjectDetection(config).save_pretrained(folder)
    size = {"height": 64, "width": 64} if fixed_size else {"shortest_edge": 48, "longest_edge": 96}
    transformers.DetrImageProcessorPil(size=size).save_pretrained(folder)
    return folder


def build_owlv2(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        [" ".join(CATEGORIES), "a photo of a red circle", "dog cat car person"] * 4,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<pad>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        model_max_length=16,
    )
    config = transformers.Owlv2Config(
        text_config=dict(
            vocab_size=raw.get_vocab_size(),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    transformers.Owlv2ForObjectDetection(config).save_pretrained(folder)
    processor = transformers.Owlv2Processor(
        image_processor=transformers.Owlv2ImageProcessorPil(size={"height": 64, "width": 64}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


def build_grounding_dino(folder: Path) -> Path:
    tokenizer = transformers.BertTokenizer(vocab=bert_vocab(1100), do_lower_case=True)
    config = transformers.GroundingDinoConfig(
        backbone_config=tiny_resnet(["stage2", "stage3", "stage4"]),
        text_config=transformers.BertConfig(
            vocab_size=1100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # weight tying needs >= 2 decoder layers
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=12,
        max_text_len=32,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    torch.manual_seed(0)
    transformers.GroundingDinoForObjectDetection(config).save_pretrained(folder)
    transformers.GroundingDinoProcessor(
        image_processor=transformers.GroundingDinoImageProcessorPil(size={"height": 96, "width": 96}),
        tokenizer=tokenizer,
    ).save_pretrained(folder)
    return folder


def build_blip(folder: Path) -> Path:
    vocab = bert_vocab()
    tokenizer = transformers.BertTokenizer(vocab=vocab, bos_token="[DEC]")
    config = transformers.BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=vocab["[DEC]"],
            pad_token_id=vocab["[PAD]"],
            sep_token_id=vocab["[SEP]"],
            eos_token_id=vocab["[SEP]"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(0)
    transformers.BlipForConditionalGeneration(config).save_pretrained(folder)
    transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    ).save_pretrained(folder)
    return folder


def build_git(folder: Path) -> Path:
    vocab = bert_vocab()
    tokenizer = transformers.BertTokenizer(vocab=vocab)
    config = transformers.GitConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        pad_token_id=vocab["[PAD]"],
        bos_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
    )
    torch.manual_seed(0)
    transformers.GitForCausalLM(config).save_pretrained(folder)
    transformers.GitProcessor(
        image_processor=transformers.CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    ).save_pretrained(folder)
    return folder


# the fixed answer the micro Florence-2 learns for each task prompt (whatever the image)
FLORENCE_ANSWERS = {
    "<OD>": "circle<loc_100><loc_200><loc_500><loc_600>square<loc_50><loc_60><loc_300><loc_999>",
    "<CAPTION>": "a red circle",
    "<MORE_DETAILED_CAPTION>": "two shapes on a grey ground",
    "<OCR_WITH_REGION>": "stop<loc_100><loc_100><loc_400><loc_100><loc_400><loc_300><loc_100><loc_300>",
    "<DENSE_REGION_CAPTION>": "blue square<loc_100><loc_200><loc_500><loc_600>",
}
FLORENCE_PARSE_CONFIG = {
    "ocr": {"AREA_THRESHOLD": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": []},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def build_florence2(folder: Path, train_steps: int = 250) -> Path:
    """A micro Florence-2 (~0.8M parameters, 64 px) with a tokenizer trained from scratch,
    then taught FLORENCE_ANSWERS until its loss is small."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    prompts = [
        "What does the image describe?",
        "Describe with a paragraph what is shown in the image.",
        "Describe in detail what is shown in the image.",
        "Locate the objects with category name in the image.",
        "Locate the objects in the image, with their descriptions.",
        "What is the text in the image, with regions?",
    ]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        prompts + list(FLORENCE_ANSWERS.values()),
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<image>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    # location and task tokens as normal tokens, so they survive decoding
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<od>", "</od>", "<ocr>", "</ocr>"])
    size = 32
    config = transformers.Florence2Config(
        vision_config=transformers.Florence2VisionConfig(
            depths=[1, 1, 1, 1],
            embed_dim=[16, 32, 64, 128],
            num_heads=[1, 2, 4, 8],
            num_groups=[1, 2, 4, 8],
            window_size=4,
            projection_dim=64,
            drop_path_rate=0.0,
        ),
        text_config=transformers.BartConfig(
            vocab_size=len(tokenizer),
            d_model=64,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.image_token_id,
    )
    processor = transformers.Florence2Processor(
        image_processor=transformers.CLIPImageProcessorPil(
            size={"height": size, "width": size}, do_center_crop=False, image_seq_length=(size // 32) ** 2 + 1
        ),
        tokenizer=tokenizer,
        post_processor_config=FLORENCE_PARSE_CONFIG,
    )
    torch.manual_seed(0)
    model = transformers.Florence2ForConditionalGeneration(config)

    tasks = list(FLORENCE_ANSWERS)
    picture = Image.new("RGB", (48, 40), (128, 128, 128))
    inputs = processor(text=tasks, images=[picture] * len(tasks), return_tensors="pt", padding=True)
    targets = [
        [tokenizer.bos_token_id]
        + tokenizer(FLORENCE_ANSWERS[t], add_special_tokens=False).input_ids
        + [tokenizer.eos_token_id]
        for t in tasks
    ]
    labels = torch.full((len(tasks), max(map(len, targets))), -100)
    for row, target in zip(labels, targets, strict=True):
        row[: len(target)] = torch.tensor(target)
    optimiser = torch.optim.AdamW(model.parameters(), lr=4e-3)
    model.train()
    for _ in range(train_steps):
        loss = model(**inputs, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if loss.item() < 0.02:
            break
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def detr_path(models_dir: Path) -> Path:
    return build_detr(models_dir / "detr")


@pytest.fixture(scope="module")
def florence2_path(models_dir: Path) -> Path:
    return build_florence2(models_dir / "florence2")


# -- object detection ----------------------------------------------------------------------------


def test_detr_rows_batching_and_registry(detr_path: Path, images: list[ImageRef], tmp_path: Path) -> None:
    settings = {"model_path": str(detr_path), "threshold": 0.0, "batch_size": 3}
    detector = build_specialist("hf_object_detection", "detr", settings, context(tmp_path))
    assert isinstance(detector, HubObjectDetector) and detector.flavour == "closed"
    rows = detector.annotate(images, empty("labels"))
    check_rows(detector, images, rows)
    assert all(rows), "threshold 0 keeps every query that lands inside the image"
    for row in (r for image_rows in rows for r in image_rows):
        assert (row["task"], row["region_kind"]) == ("object", "object")
        assert row["category"] in CATEGORIES and row["text"] == row["category"]
    assert_same(rows, one_by_one(detector, images))
    # a threshold above every softmax score keeps nothing
    strict = HubObjectDetector("detr", {**settings, "threshold": 0.999}, context(tmp_path))
    assert strict.annotate(images, empty("labels")) == [[], [], []]
    assert strict.version != detector.version  # the operating point is part of the version


def test_detr_with_padding_processor_keeps_boxes_in_original_pixels(
    models_dir: Path, images: list[ImageRef], tmp_path: Path
) -> None:
    # shortest/longest-edge resizing with padding, as real DETR processors do
    path = build_detr(models_dir / "detr-padded", fixed_size=False)
    detector = HubObjectDetector("detr", {"model_path": str(path), "threshold": 0.0}, context(tmp_path))
    rows = detector.annotate(images, empty("labels"))
    check_rows(detector, images, rows)
    assert sum(map(len, rows)) > 0


def test_owlv2_uses_labels_as_queries(models_dir: Path, images: list[ImageRef], tmp_path: Path) -> None:
    path = build_owlv2(models_dir / "owlv2")
    queries = ["red circle", "blue square"]
    settings = {"model_path": str(path), "threshold": 0.0, "labels": queries, "batch_size": 2}
    detector = HubObjectDetector("owl", settings, context(tmp_path))
    assert detector.flavour == "owl"
    rows = detector.annotate(images, empty("labels"))
    check_rows(detector, images, rows)
    assert {r["category"] for image_rows in rows for r in image_rows} <= set(queries)
    assert sum(map(len, rows)) > 0
    assert_same(rows, one_by_one(detector, images))
    # without labels the queries are the ontology's categories
    default = HubObjectDetector("owl", {"model_path": str(path)}, context(tmp_path))
    assert default.queries == list(CATEGORIES)
    with pytest.raises(ValueError, match="needs text queries"):
        HubObjectDetector("owl", {"model_path": str(path)}, context(tmp_path, categories=()))


def test_grounding_dino_assigns_each_box_a_query(
    models_dir: Path, images: list[ImageRef], tmp_path: Path
) -> None:
    path = build_grounding_dino(models_dir / "grounding-dino")
    queries = ["Red Circle", "square", "triangle"]
    settings = {"model_path": str(path), "threshold": 0.0, "labels": queries, "batch_size": 3}
    detector = HubObjectDetector("gdino", settings, context(tmp_path))
    assert detector.flavour == "grounding" and detector.grounding_text == "red circle. square. triangle."
    # every word token belongs to its query; [CLS], the dots and [SEP] to none
    assert detector.grounding_token_query.tolist() == [-1, 0, 0, -1, 1, -1, 2, -1, -1]
    rows = detector.annotate(images, empty("labels"))
    check_rows(detector, images, rows)
    assert sum(map(len, rows)) > 0
    assert {r["category"] for image_rows in rows for r in image_rows} <= set(queries)
    assert_same(rows, one_by_one(detector, images))
    too_many = {**settings, "labels": [f"thing {i}" for i in range(20)]}
    with pytest.raises(ValueError, match="max_text_len"):
        HubObjectDetector("gdino", too_many, context(tmp_path))


# -- image to text -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["blip", "git"])
def test_captioner_rows_scores_and_batching(
    family: str, models_dir: Path, images: list[ImageRef], tmp_path: Path
) -> None:
    path = (build_blip if family == "blip" else build_git)(models_dir / family)
    for beams in (1, 2):
        settings = {"model_path": str(path), "max_new_tokens": 6, "num_beams": beams, "batch_size": 3}
        captioner = build_specialist("hf_image_to_text", family, settings, context(tmp_path))
        assert isinstance(captioner, HubCaptioner)
        rows = captioner.annotate(images, empty("labels"))
        check_rows(captioner, images, rows)
        assert all(len(image_rows) == 1 for image_rows in rows)
        for (row,) in rows:
            assert (row["annotation_type"], row["task"]) == ("text", "brief_caption")
            assert "[DEC]" not in row["text"] and "[SEP]" not in row["text"]
            # a random model spreads its probability over the whole vocabulary
            assert 0.0 < row["score"] < 0.5
        assert_same(rows, one_by_one(captioner, images))


def test_captioner_refuses_other_model_types(detr_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'detr' is not supported"):
        HubCaptioner("cap", {"model_path": str(detr_path)}, context(tmp_path))
    with pytest.raises(ValueError, match="task must be one of"):
        HubCaptioner("cap", {"model_path": str(detr_path), "task": "ocr"}, context(tmp_path))


# -- Florence-2 ----------------------------------------------------------------------------------


def dequantized(bins: list[int], size: int) -> float:
    # Florence-2's location bins: 1000 per side, a token stands for its bin's centre
    return float(int((bins + 0.5) * size / 1000))


def test_florence2_parses_each_task(florence2_path: Path, images: list[ImageRef], tmp_path: Path) -> None:
    tasks = list(FLORENCE_ANSWERS)
    settings = {
        "model_path": str(florence2_path),
        "tasks": tasks,
        "num_beams": 1,
        "max_new_tokens": 40,
        "batch_size": 3,
    }
    florence = build_specialist("florence2", "florence2", settings, context(tmp_path))
    assert isinstance(florence, Florence2Specialist)
    assert florence.annotation_types == ("region_text", "text")
    rows = florence.annotate(images, empty("labels"))
    check_rows(florence, images, rows)
    for image, image_rows in zip(images, rows, strict=True):
        w, h = image.width, image.height
        by_task: dict[str, list[dict]] = {}
        for row in image_rows:
            by_task.setdefault(row["task"], []).append(row)
        objects = by_task["object"]
        assert [r["category"] for r in objects] == ["circle", "square"]
        assert objects[0]["box"] == [
            dequantized(100, w),
            dequantized(200, h),
            dequantized(500, w),
            dequantized(600, h),
        ]
        assert objects[1]["box"][3] == dequantized(999, h) <= h
        (region,) = by_task["region_caption"]
        assert region["text"] == "blue square" and region["box"] == objects[0]["box"]
        assert region.get("category") is None and region["region_kind"] == "object"
        (ocr,) = by_task["ocr"]
        assert ocr["text"] == "stop" and ocr["region_kind"] == "text"
        assert ocr["quad"] == [
            dequantized(100, w),
            dequantized(100, h),
            dequantized(400, w),
            dequantized(100, h),
            dequantized(400, w),
            dequantized(300, h),
            dequantized(100, w),
            dequantized(300, h),
        ]
        assert ocr["box"] == [
            dequantized(100, w),
            dequantized(100, h),
            dequantized(400, w),
            dequantized(300, h),
        ]
        assert [r["text"] for r in by_task["brief_caption"]] == ["a red circle"]
        assert [r["text"] for r in by_task["more_detailed_caption"]] == ["two shapes on a grey ground"]
        # one score per generation: every region of the <OD> answer shares it; the model has
        # learnt its answers, so it is confident
        assert objects[0]["score"] == objects[1]["score"] > 0.5
    assert_same(rows, one_by_one(florence, images))


def test_florence2_beam_search_and_missing_parse_config(
    florence2_path: Path, images: list[ImageRef], tmp_path: Path
) -> None:
    # a saved processor without post_processor_config (older conversions) still parses
    bare = tmp_path / "florence2-bare"
    shutil.copytree(florence2_path, bare)
    processor_config = json.loads((bare / "processor_config.json").read_text())
    processor_config.pop("post_processor_config")
    (bare / "processor_config.json").write_text(json.dumps(processor_config))
    settings = {"model_path": str(bare), "tasks": ["<OD>", "<CAPTION>"], "num_beams": 2, "max_new_tokens": 40}
    florence = Florence2Specialist("florence2", settings, context(tmp_path))
    rows = florence.annotate(images[:2], empty("labels"))
    check_rows(florence, images[:2], rows)
    for image_rows in rows:
        assert [r["text"] for r in image_rows] == ["circle", "square", "a red circle"]
    assert_same(rows, one_by_one(florence, images[:2]))
    with pytest.raises(ValueError, match="tasks must be some of"):
        Florence2Specialist("florence2", {**settings, "tasks": ["<OCR>"]}, context(tmp_path))


# -- configuration errors and versions -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["hf_object_detection", "hf_image_to_text", "florence2"])
def test_model_path_errors_are_clear(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'model_path' is required"):
        build_specialist(kind, "hub", {}, context(tmp_path))
    with pytest.raises(ValueError, match="looks like a hub model id"):
        build_specialist(kind, "hub", {"model_path": "facebook/detr-resnet-50"}, context(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        build_specialist(kind, "hub", {"model_path": str(tmp_path / "nowhere")}, context(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        build_specialist(kind, "hub", {"model_path": str(tmp_path / "empty")}, context(tmp_path))
    with pytest.raises(ValueError, match="unknown settings \\['treshold'\\]"):
        build_specialist(kind, "hub", {"model_path": "x", "treshold": 0.5}, context(tmp_path))


def test_version_follows_the_model_folder(detr_path: Path, models_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "detr-copy"
    shutil.copytree(detr_path, copy)
    settings = {"model_path": str(detr_path)}
    first = HubObjectDetector("detr", settings, context(tmp_path))
    assert HubObjectDetector("detr", {"model_path": str(copy)}, context(tmp_path)).version == first.version
    assert model_fingerprint(copy) == model_fingerprint(detr_path)
    config = json.loads((copy / "config.json").read_text())
    config["num_queries"] = 7
    (copy / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(copy) != model_fingerprint(detr_path)
    # half precision is asked for, but a CPU run stays in float32 (and so keeps its version)
    assert (
        HubObjectDetector("detr", {**settings, "dtype": "bfloat16"}, context(tmp_path)).version
        == first.version
    )
    with pytest.raises(ValueError, match="dtype must be one of"):
        HubObjectDetector("detr", {**settings, "dtype": "float8"}, context(tmp_path))
    with pytest.raises(ValueError, match="closed-set"):
        HubObjectDetector("detr", {**settings, "labels": ["cat"]}, context(tmp_path))


@pytest.mark.gpu
def test_detector_on_cuda_matches_cpu(detr_path: Path, images: list[ImageRef], tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    settings = {"model_path": str(detr_path), "threshold": 0.0}
    gpu = HubObjectDetector("detr", settings, context(tmp_path, device="cuda"))
    assert next(gpu.model.parameters()).device.type == "cuda"
    rows = gpu.annotate(images, empty("labels"))
    check_rows(gpu, images, rows)
    cpu_rows = HubObjectDetector("detr", settings, context(tmp_path)).annotate(images, empty("labels"))
    assert_same(rows, cpu_rows, tol=1e-2)  # cuDNN convolutions may use TF32
    half = HubObjectDetector("detr", {**settings, "dtype": "float16"}, context(tmp_path, device="cuda"))
    assert next(half.model.parameters()).dtype == torch.float16
    check_rows(half, images, half.annotate(images, empty("labels")))


def test_runner_keeps_every_row(
    detr_path: Path, florence2_path: Path, images: list[ImageRef], tmp_path: Path
) -> None:
    # the engine's own path: ids, source and the ingest geometry checks quarantine nothing
    from models.specialists.runner import run_specialist

    settings = {"model_path": str(florence2_path), "tasks": list(FLORENCE_ANSWERS), "num_beams": 1}
    for specialist in (
        HubObjectDetector("detr", {"model_path": str(detr_path), "threshold": 0.0}, context(tmp_path)),
        Florence2Specialist("florence2", settings, context(tmp_path)),
    ):
        run = run_specialist(specialist, images, batch_size=2, progress=False)
        expected = sum(map(len, specialist.annotate(images, empty("labels"))))
        assert run.quarantine.height == 0 and run.labels.height == expected > 0
        assert set(run.labels["source"]) == {f"{specialist.name}@{specialist.version}"}
