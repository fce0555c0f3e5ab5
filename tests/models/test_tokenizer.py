"""The tokenizer, trained on world captions: Florence-2 tokens are one id, targets round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from models.tasks import LOC_BINS, SEP, TASK_TOKENS, VOCABULARY, loc_token
from models.tokenizer import IMAGE_TOKEN, train_tokenizer
from relabel.config import WorldParams
from relabel.world.captions import scene_captions
from relabel.world.scene import compose_scene


def world_captions(n_scenes: int = 30, captionings: int = 3) -> list[str]:
    """Brief, detailed and more detailed captions of world scenes composed in memory (no
    image is written), each scene captioned a few times with different seeds."""
    params = WorldParams()
    texts = []
    for index in range(n_scenes):
        rng = np.random.default_rng([0, index])
        _, scene = compose_scene(rng, params, index, "curated", "x.png")
        for draw in range(captionings):
            rng = np.random.default_rng([1, index, draw])
            texts += [caption.text for caption in scene_captions(scene, rng)]
    return texts


@pytest.fixture(scope="module")
def captions() -> list[str]:
    texts = world_captions()
    assert len(texts) >= 200
    return texts


@pytest.fixture(scope="module")
def tokenizer(captions):
    return train_tokenizer(captions)


# Florence-2 targets of every shape: boxes, several boxes after one phrase, polygon rings,
# OCR lines and quads, a caption, and text the corpus never had
TARGETS = [
    "red car<loc_100><loc_100><loc_500><loc_400>",
    "car<loc_0><loc_1><loc_998><loc_999>two dogs<loc_5><loc_6><loc_7><loc_8><loc_9><loc_10><loc_11><loc_12>",
    "<loc_10><loc_20><loc_30><loc_40><loc_50><loc_60><sep><loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>",
    "EXIT 94\nTucker Rd",
    "EXIT 94<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>",
    "A large yellow boat floats in the centre, in front of the red boat.",
    "  café Zürich 🚗 <loc_7>, (x) ",
]


def test_special_tokens_have_barts_ids(tokenizer):
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<s>", 0)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<unk>", 3)
    assert (tokenizer.image_token, tokenizer.image_token_id) == (IMAGE_TOKEN, 4)


def test_every_task_and_location_token_is_one_id(tokenizer):
    ids = []
    for token in VOCABULARY:
        encoded = tokenizer(token, add_special_tokens=False).input_ids
        assert len(encoded) == 1, (token, tokenizer.convert_ids_to_tokens(encoded))
        assert tokenizer.decode(encoded) == token
        ids.append(encoded[0])
    assert len(set(ids)) == len(VOCABULARY) == len(TASK_TOKENS) + 1 + LOC_BINS
    # ordinary (added) tokens, so that skip_special_tokens keeps them
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert tokenizer(loc_token(123), add_special_tokens=False).input_ids == [
        tokenizer.convert_tokens_to_ids("<loc_123>")
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_targets_round_trip_exactly(tokenizer, target):
    ids = tokenizer(target).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == target
    assert tokenizer.decode(ids) == "<s>" + target + "</s>"


def test_a_box_costs_one_id_per_coordinate(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(TARGETS[0]).input_ids)
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert tokens[-5:-1] == ["<loc_100>", "<loc_100>", "<loc_500>", "<loc_400>"]


def test_skip_special_tokens_drops_only_the_framing(tokenizer):
    # what generate returns: decoder start (</s>), <s>, the answer, </s>, padding
    answer = tokenizer(TARGETS[2], add_special_tokens=False).input_ids
    generated = [2, 0, *answer, 2, 1, 1]
    assert tokenizer.decode(generated, skip_special_tokens=True) == TARGETS[2]
    assert SEP in tokenizer.decode(generated, skip_special_tokens=True)


def test_training_is_deterministic(captions, tokenizer):
    again = train_tokenizer(captions)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert len(again) == len(tokenizer)


def test_vocab_size_bounds_the_learned_tokens(captions):
    small = train_tokenizer(captions, vocab_size=300)
    assert len(small) <= 300 + len(VOCABULARY)
    for target in TARGETS:
        assert small.decode(small(target).input_ids, skip_special_tokens=True) == target


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(loaded) == len(tokenizer)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.image_token, loaded.image_token_id) == (IMAGE_TOKEN, tokenizer.image_token_id)
    for target in TARGETS:
        assert loaded(target).input_ids == tokenizer(target).input_ids
        assert loaded.decode(loaded(target).input_ids, skip_special_tokens=True) == target


def test_corpus_texts_leave_out_the_tokens_every_tokenizer_gets_whole(tmp_path):
    import polars as pl

    from models.tokenizer import corpus_texts

    path = tmp_path / "shard-00.parquet"
    pl.DataFrame(
        {
            "prompt": ["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>A red car."],
            "target": ["car<loc_1><loc_2><loc_3><loc_4>dog<loc_5><loc_6><loc_7><loc_8>", "A red car.<sep>x"],
        }
    ).write_parquet(path)
    texts = list(corpus_texts([path]))
    assert texts == ["A red car.", "car dog", "A red car. x"]
    assert not any("<" in text for text in texts)
