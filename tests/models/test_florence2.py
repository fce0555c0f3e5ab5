"""The unified model's presets, processor, and save/load, on the micro preset (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from transformers import Florence2ForConditionalGeneration

from models.florence2 import (
    IMAGE_STRIDE,
    PRESETS,
    build_config,
    build_model,
    build_processor,
    count_parameters,
    load_model,
    save_model,
)
from models.tasks import OD
from models.tokenizer import train_tokenizer

# Florence-2's own vocabulary: BART's 50265 tokens and its task and location tokens
FLORENCE2_VOCAB_SIZE = 51289

TEXTS = [
    "A drawing of a red car and two dogs on a road.",
    "This picture shows a blue boat in calm water under a sunset sky.",
    "A small white bird flies in the top left, to the left of the yellow boat.",
    "EXIT 94",
] * 20

TARGETS = ["red car<loc_100><loc_100><loc_500><loc_400>", "A drawing of a blue boat."]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return build_processor(tokenizer, "micro")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_model("micro", tokenizer).eval()


@pytest.fixture(scope="module")
def inputs(processor):
    return processor(images=images(), text=[OD, "<CAPTION>"], return_tensors="pt", padding=True)


def images() -> list[Image.Image]:
    # two tiny images of different sizes and shapes: the processor resizes both to the preset
    return [Image.new("RGB", (320, 240), (200, 30, 30)), Image.new("RGB", (60, 90), (30, 30, 200))]


def generate(model, inputs, tokens: int = 5) -> torch.Tensor:
    # greedy, and at least `tokens` tokens: an untrained model would stop at once
    with torch.no_grad():
        return model.generate(
            **inputs, do_sample=False, num_beams=1, min_new_tokens=tokens, max_new_tokens=tokens
        )


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_fit_the_architecture(name):
    preset = PRESETS[name]
    assert preset.image_size % IMAGE_STRIDE == 0
    assert len(preset.embed_dims) == len(preset.depths) == len(preset.num_heads) == 4
    assert all(dim % heads == 0 for dim, heads in zip(preset.embed_dims, preset.num_heads, strict=True))
    assert preset.d_model % preset.attention_heads == 0
    assert preset.image_tokens == (preset.image_size // 32) ** 2 + 1


@pytest.mark.parametrize(("name", "expected", "tolerance"), [("base", 232e6, 0.02), ("large", 771e6, 0.03)])
def test_base_and_large_have_florence2s_parameter_counts(name, expected, tolerance):
    config = build_config(
        name,
        FLORENCE2_VOCAB_SIZE,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        image_token_id=FLORENCE2_VOCAB_SIZE,
    )
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = Florence2ForConditionalGeneration(config)
    count = count_parameters(model)
    print(f"{name}: {count:,} parameters (Florence-2: {expected / 1e6:.0f}M)")
    assert abs(count - expected) <= tolerance * expected


def test_build_model_is_sized_for_the_tokenizer(model, tokenizer):
    config = model.config
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.image_token_id == tokenizer.image_token_id
    assert config.text_config.pad_token_id == tokenizer.pad_token_id
    assert config.text_config.decoder_start_token_id == tokenizer.eos_token_id
    assert config.vision_config.projection_dim == config.text_config.d_model == 256
    assert 5e6 < count_parameters(model) < 10e6


def test_unknown_preset_is_refused(tokenizer):
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("huge", tokenizer)


def test_processor_writes_one_placeholder_per_image_token(inputs, tokenizer):
    size = PRESETS["micro"].image_size
    assert tuple(inputs["pixel_values"].shape) == (2, 3, size, size)
    per_row = (inputs["input_ids"] == tokenizer.image_token_id).sum(dim=1)
    assert per_row.tolist() == [PRESETS["micro"].image_tokens] * 2 == [50, 50]


def test_forward_with_labels_gives_a_finite_loss(model, inputs, tokenizer):
    labels = tokenizer(TARGETS, return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100  # padding is not predicted
    model.train()
    try:
        output = model(**inputs, labels=labels)
        output.loss.backward()
    finally:
        model.zero_grad()
        model.eval()
    assert math.isfinite(output.loss.item())
    assert tuple(output.logits.shape) == (*labels.shape, len(tokenizer))
    # about log(vocabulary) for a model that has learned nothing yet
    assert 0.5 * math.log(len(tokenizer)) < output.loss.item() < 2 * math.log(len(tokenizer))


def test_generate_returns_ids_that_decode(model, inputs, tokenizer):
    generated = generate(model, inputs)
    assert generated.shape[0] == 2
    assert int(generated.max()) < len(tokenizer)
    texts = tokenizer.batch_decode(generated, skip_special_tokens=False)
    assert all(isinstance(text, str) and text.startswith("</s>") for text in texts)


def test_save_and_load_give_identical_generations(model, processor, inputs, tmp_path):
    save_model(model, processor, tmp_path)
    loaded, loaded_processor = load_model(tmp_path)
    assert not loaded.training
    assert loaded_processor.num_image_tokens == processor.num_image_tokens
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    reloaded_inputs = loaded_processor(
        images=images(), text=[OD, "<CAPTION>"], return_tensors="pt", padding=True
    )
    for key in inputs:
        assert torch.equal(reloaded_inputs[key], inputs[key]), key
    assert torch.equal(generate(loaded, reloaded_inputs), generate(model, inputs))


def test_load_model_reads_local_folders_only(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        load_model("some-org/some-model")


def test_post_process_generation_reads_object_detection(processor, tokenizer):
    generated = "</s><s>car<loc_100><loc_100><loc_500><loc_400>dog<loc_0><loc_0><loc_999><loc_999></s>"
    result = processor.post_process_generation(generated, task=OD, image_size=(320, 240))
    assert result[OD]["labels"] == ["car", "dog"]
    assert result[OD]["bboxes"] == [[32, 24, 160, 96], [0, 0, 319, 239]]
    # from ids, as generate returns them
    ids = tokenizer(TARGETS[0]).input_ids
    from_ids = processor.post_process_generation(sequence=ids, task=OD, image_size=(320, 240))
    assert from_ids[OD] == {"bboxes": [[32, 24, 160, 96]], "labels": ["red car"]}


@pytest.mark.parametrize(
    ("task", "generated", "expected"),
    [
        ("<CAPTION>", "</s><s>A red car.</s>", "A red car."),
        (
            "<OCR_WITH_REGION>",
            "</s><s>EXIT 94" + "".join(f"<loc_{k}>" for k in range(8)) + "</s>",
            {"quad_boxes": [list(range(8))], "labels": ["EXIT 94"]},
        ),
        (
            "<CAPTION_TO_PHRASE_GROUNDING>",
            "</s><s>a red car<loc_10><loc_20><loc_30><loc_40></s>",
            {"bboxes": [[10, 20, 30, 40]], "labels": ["a red car"]},
        ),
        (
            "<REGION_TO_SEGMENTATION>",
            "</s><s><loc_10><loc_20><loc_30><loc_40><loc_50><loc_60></s>",
            {"polygons": [[[10, 20, 30, 40, 50, 60]]], "labels": [""]},
        ),
        (
            "<REGION_PROPOSAL>",
            "</s><s><loc_10><loc_20><loc_30><loc_40></s>",
            {"bboxes": [[10, 20, 30, 40]], "labels": [""]},
        ),
    ],
)
def test_post_process_generation_reads_every_kind_of_answer(processor, task, generated, expected):
    # on a 1000 x 1000 image a bin is one pixel: <loc_k> reads back as k (bin centre, floored)
    assert processor.post_process_generation(generated, task=task, image_size=(1000, 1000)) == {
        task: expected
    }


def test_a_saved_model_is_a_starting_point_to_fine_tune_and_a_specialist(model, processor, tmp_path):
    from models.florence2 import initial_model
    from models.specialists.base import ImageRef
    from models.specialists.registry import BuildContext, build_specialist
    from relabel.labels import empty

    save_model(model, processor, tmp_path / "model")
    # init_from wins over the preset and the corpus: the folder's own shape and tokenizer
    tuned, tuned_processor = initial_model(
        "small", [], vocab_size=300, min_frequency=2, init_from=tmp_path / "model"
    )
    assert tuned.training and len(tuned_processor.tokenizer) == len(processor.tokenizer)
    weights = dict(model.named_parameters())
    assert all(torch.equal(p, weights[name]) for name, p in tuned.named_parameters())

    picture = tmp_path / "picture.png"
    images()[0].save(picture)
    settings = {"model_path": str(tmp_path / "model"), "tasks": [OD], "num_beams": 1, "max_new_tokens": 8}
    specialist = build_specialist("florence2", "ours", settings, BuildContext(workdir=tmp_path))
    (rows,) = specialist.annotate(
        [ImageRef(image_id="a", path=picture, width=320, height=240)], empty("labels")
    )
    assert isinstance(rows, list)  # an untrained model may say nothing, but it runs as a specialist
