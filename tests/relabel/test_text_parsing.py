"""relabel.text_parsing: semantic elements, token complexity and table 3 from real spaCy parses."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest

from relabel.config import WorldParams
from relabel.text_parsing import (
    PARSE_SCHEMA,
    SPACY_MODEL,
    UNNEEDED_COMPONENTS,
    load_parser,
    parse_texts,
    text_statistics,
)
from relabel.world.captions import scene_captions
from relabel.world.scene import compose_scene

RIDER = "A man riding a red horse on the beach."


@pytest.fixture(scope="module")
def nlp():
    return load_parser()


def texts_frame(*texts: str | None) -> pl.DataFrame:
    return pl.DataFrame(
        {"label_id": [f"l{i}" for i in range(len(texts))], "text": list(texts)},
        schema={"label_id": pl.String, "text": pl.String},
    )


def undirected_degrees(doc) -> Counter:
    """Degree of every token index, counted edge by edge: one edge from each token to its head
    (a root, its own head, has none), credited to both ends; edges to punctuation do not count."""
    degrees: Counter = Counter()
    for token in doc:
        if token.head.i != token.i and not token.is_punct and not token.head.is_punct:
            degrees[token.i] += 1
            degrees[token.head.i] += 1
    return degrees


def test_parser_keeps_only_what_pos_and_the_parse_need(nlp):
    assert nlp.pipe_names == ["tok2vec", "tagger", "parser", "attribute_ruler"]
    assert not set(UNNEEDED_COMPONENTS) & set(nlp.component_names)
    assert f"{nlp.meta['lang']}_{nlp.meta['name']}" == SPACY_MODEL


def test_semantic_elements_of_a_simple_sentence(nlp):
    row = parse_texts(texts_frame(RIDER), nlp).row(0, named=True)
    assert row["objects"] == ["man", "horse", "beach"]
    assert row["attributes"] == ["red"]
    assert row["actions"] == ["riding"]
    assert row["proper_nouns"] == []
    assert (row["n_objects"], row["n_attributes"], row["n_actions"], row["n_proper_nouns"]) == (3, 1, 1, 0)
    assert row["n_tokens"] == 9  # the full stop is not counted


def test_complexity_is_the_undirected_degree(nlp):
    row = parse_texts(texts_frame(RIDER), nlp).row(0, named=True)
    # checked by hand: man is the root with children "A", "riding" (the "." does not count: 2);
    # horse has head "riding" and children "a", "red" (3); beach has head "on" and child
    # "the" (2); riding has head "man" and children "horse", "on" (3)
    assert row["object_complexity"] == pytest.approx(7 / 3)
    assert row["action_complexity"] == 3.0

    doc = nlp(RIDER)
    degrees = undirected_degrees(doc)
    nouns = [degrees[t.i] for t in doc if t.pos_ == "NOUN"]
    verbs = [degrees[t.i] for t in doc if t.pos_ == "VERB"]
    assert row["object_complexity"] == pytest.approx(sum(nouns) / len(nouns))
    assert row["action_complexity"] == pytest.approx(sum(verbs) / len(verbs))


def test_auxiliaries_are_not_actions_and_counts_are_attributes(nlp):
    parked, dogs = parse_texts(
        texts_frame("A red car is parked near the house.", "Two dogs play with John in Paris."), nlp
    ).iter_rows(named=True)
    assert parked["actions"] == ["parked"]  # "is" is AUX
    assert parked["objects"] == ["car", "house"]
    # car: head "parked", children "A", "red"; house: head "near", child "the"
    assert parked["object_complexity"] == 2.5
    # parked is the root: children "car", "is", "near" (and ".", which does not count)
    assert parked["action_complexity"] == 3.0
    assert dogs["attributes"] == ["two"]  # NUM as nummod of "dogs"
    assert dogs["proper_nouns"] == ["john", "paris"]
    assert dogs["objects"] == ["dogs"]
    assert dogs["actions"] == ["play"]


@pytest.mark.parametrize("text", [None, "", "   ", "..."])
def test_texts_without_words_give_empty_rows(nlp, text):
    row = parse_texts(texts_frame(text), nlp).row(0, named=True)
    assert row["n_tokens"] == 0
    assert row["objects"] == row["attributes"] == row["actions"] == row["proper_nouns"] == []
    assert row["n_objects"] == row["n_attributes"] == row["n_actions"] == row["n_proper_nouns"] == 0
    assert row["object_complexity"] is None
    assert row["action_complexity"] is None


def test_one_row_per_text_in_order_with_the_schema(nlp):
    texts = texts_frame("A dog.", None, RIDER, "", "Two cats sleep.", "A dog.").with_columns(extra=pl.lit(1))
    parses = parse_texts(texts, nlp, batch_size=2)
    assert parses.schema == PARSE_SCHEMA
    assert parses["label_id"].to_list() == texts["label_id"].to_list()
    assert parses["objects"].to_list() == [["dog"], [], ["man", "horse", "beach"], [], ["cats"], ["dog"]]


def test_empty_input_gives_an_empty_frame(nlp):
    parses = parse_texts(texts_frame(), nlp)
    assert parses.height == 0
    assert parses.schema == PARSE_SCHEMA


def test_text_statistics_by_hand():
    parses = pl.DataFrame(
        {
            "label_id": ["a", "b", "c", "d"],
            "n_tokens": [4, 8, 10, 20],
            "objects": [["x"], [], ["x", "y"], ["x"] * 4],
            "attributes": [[], [], ["r"], ["r", "s"]],
            "actions": [[], [], ["v"], ["v", "w"]],
            "proper_nouns": [[], ["p"], [], []],
            "n_objects": [1, 0, 2, 4],
            "n_attributes": [0, 0, 1, 2],
            "n_actions": [0, 0, 1, 2],
            "n_proper_nouns": [0, 1, 0, 0],
            "object_complexity": [2.0, None, 3.0, 5.0],
            "action_complexity": [None, None, 2.0, 4.0],
        },
        schema=PARSE_SCHEMA,
    ).with_columns(task=pl.Series(["brief", "brief", "detailed", "detailed"]))
    table = text_statistics(parses)
    assert table.columns == [
        "task",
        "texts",
        "avg_tokens",
        "avg_objects",
        "avg_attributes",
        "avg_actions",
        "avg_proper_nouns",
        "avg_object_complexity",
        "avg_action_complexity",
    ]
    brief, detailed = table.iter_rows(named=True)
    assert brief["task"] == "brief" and detailed["task"] == "detailed"
    assert brief["texts"] == 2
    assert brief["avg_tokens"] == 6.0
    assert brief["avg_objects"] == 0.5
    assert brief["avg_proper_nouns"] == 0.5
    assert brief["avg_object_complexity"] == 2.0  # "b" has no objects and is not averaged in
    assert brief["avg_action_complexity"] is None
    assert detailed["avg_tokens"] == 15.0
    assert detailed["avg_objects"] == 3.0
    assert detailed["avg_attributes"] == 1.5
    assert detailed["avg_actions"] == 1.5
    assert detailed["avg_object_complexity"] == 4.0
    assert detailed["avg_action_complexity"] == 3.0


def test_text_statistics_of_nothing():
    table = text_statistics(pl.DataFrame(schema={**PARSE_SCHEMA, "source": pl.String}), by="source")
    assert table.height == 0
    assert table.columns[:2] == ["source", "texts"]
    assert len(table.columns) == 9


def test_detailed_captions_have_more_semantic_elements(nlp):
    params = WorldParams()
    rows = []
    for index in range(12):
        _, scene = compose_scene(np.random.default_rng([0, index]), params, index, "curated", "x.png")
        for caption in scene_captions(scene, np.random.default_rng([1, index])):
            rows.append({"label_id": f"{index}-{caption.task}", "text": caption.text, "task": caption.task})
    texts = pl.DataFrame(rows)
    parses = parse_texts(texts, nlp).with_columns(task=texts["task"])
    table = {row["task"]: row for row in text_statistics(parses).iter_rows(named=True)}
    brief, detailed, more = (
        table["brief_caption"],
        table["detailed_caption"],
        table["more_detailed_caption"],
    )
    assert brief["texts"] == detailed["texts"] == more["texts"] == 12
    assert brief["avg_tokens"] < detailed["avg_tokens"]
    assert brief["avg_objects"] < detailed["avg_objects"]
    assert brief["avg_actions"] < detailed["avg_actions"] < more["avg_actions"]
