"""The dataset card written beside an export: front matter, counts, sections, plots, determinism."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
import yaml
from PIL import Image

from relabel.dataset_card import (
    CARD_FILE,
    DPI,
    MAX_PLOTTED_CLASSES,
    NOT_INSTALLED,
    PLOT_FILES,
    CardInputs,
    card_markdown,
    counts_tables,
    package_versions,
    write_card,
)
from relabel.labels import frame, label_id_for

MODEL = "florence2@iteration-0"
AUDITOR = "human-audit@maria"
DIGEST = "3f2a9c"
MD5 = {"data/filter/filtered_labels/iteration-1": "0123456789abcdef0123456789abcdef"}
COMMAND = "relabel export --iteration 1 --format coco --min-score 0.5 out/"


def label(source, task, *, category=None, box=None, text=None, image="img-1", polygon=None):
    annotation_type = "text" if box is None and polygon is None else "region_text"
    row = {
        "image_id": image,
        "annotation_type": annotation_type,
        "task": task,
        "text": text if text is not None else category,
        "region_kind": None if annotation_type == "text" else "object",
        "box": box,
        "polygon": polygon,
        "category": category,
        "score": 1.0,
        "source": source,
        "iteration": 1,
        "status": "accepted",
    }
    return {**row, "label_id": label_id_for(row)}


def _labels() -> pl.DataFrame:
    return frame(
        "labels",
        [
            label("human", "object", category="dog", box=[0, 0, 10, 10]),
            label("tinydet@1", "object", category="dog", box=[20, 20, 30, 30], image="img-2"),
            label(MODEL, "object", category="cat", box=[5, 5, 40, 40], image="img-3"),
            label("human", "brief_caption", text="a dog on grass"),
            label(MODEL, "detailed_caption", text="a brown dog lies on green grass", image="img-2"),
            label(AUDITOR, "brief_caption", text="a cat", image="img-3"),
        ],
    )


def _images() -> pl.DataFrame:
    return frame(
        "images",
        [
            {
                "image_id": f"img-{i}",
                "uri": f"images/{i}.png",
                "width": 64,
                "height": 48,
                "dataset": "world",
                "split": "eval" if i == 3 else "train",
            }
            for i in (1, 2, 3)
        ],
    )


def _text_statistics() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "task": ["brief_caption", "detailed_caption"],
            "texts": [2, 1],
            "avg_tokens": [3.5, 7.0],
            "avg_object_complexity": [1.25, None],
        },
        schema={
            "task": pl.String,
            "texts": pl.UInt32,
            "avg_tokens": pl.Float64,
            "avg_object_complexity": pl.Float64,
        },
    )


def _inputs(**changes) -> CardInputs:
    inputs = CardInputs(
        name="world-demo",
        iteration=1,
        export_format="coco",
        images=_images(),
        labels=_labels(),
        text_statistics=_text_statistics(),
        frozen_split_metrics=pl.DataFrame({"metric": ["map", "caption_cider"], "value": [0.41234, None]}),
        split={"images": 1, "audited labels": 1, "digest": DIGEST},
        lineage=pl.DataFrame(
            {
                "iteration": [1, 0],
                "labels": [6, 4],
                "made_from": ["iteration_labels 0 + reannotation 0", "annotate/initial_annotations"],
                "model_run": ["http://mlflow/runs/abc", None],
                "dvc_md5": ["feedc0de", None],
            },
        ),
        versions={"relabel": "0.1.0", "polars": "2.1.0"},
        sources=[
            {"name": "world", "kind": "coco", "licence": "cc-by-4.0", "path": "data/world/images"},
            {"name": "web", "kind": "folder", "licence": "cc-by-4.0", "url": "https://example.org"},
        ],
        dvc_inputs=MD5,
        filters={
            "min_score": 0.5,
            "statuses": ["raw", "superseded"],
            "include_quarantined": False,
            "left_out": {"below_min_score": 2, "status": 1},
        },
        export_command=COMMAND,
    )
    return dataclasses.replace(inputs, **changes)


def _front_matter(markdown: str) -> dict:
    assert markdown.startswith("---\n")
    head, _, _ = markdown[4:].partition("\n---\n")
    return yaml.safe_load(head)


def _table_rows(markdown: str, section: str) -> list[str]:
    """The table lines right under ``section`` (a heading line)."""
    after = markdown.split(f"\n{section}\n\n", 1)[1]
    return [line for line in after.split("\n\n", 1)[0].splitlines() if line.startswith("|")]


def test_counts_tables_count_each_view():
    counts = counts_tables(_labels(), _images())
    assert counts["annotation_type"].rows() == [("text", 3), ("region_text", 3)]
    assert counts["task"].rows() == [("brief_caption", 2), ("detailed_caption", 1), ("object", 3)]
    assert counts["class"].rows() == [("dog", 2), ("cat", 1)]
    assert counts["origin"].rows() == [
        ("florence2", "model", "iteration-0", 2),
        ("human", "human", None, 2),
        ("human-audit", "human-audit", "maria", 1),
        ("tinydet", "specialist", "1", 1),
    ]
    assert counts["split"].rows() == [("train", 2, 4), ("eval", 1, 2)]


def test_a_label_without_its_image_is_counted_under_no_split():
    counts = counts_tables(_labels(), _images().filter(pl.col("image_id") != "img-3"))
    assert counts["split"].rows() == [("train", 2, 4), (None, 0, 2)]


def test_the_front_matter_parses_and_has_licence_size_tasks_and_tags(tmp_path):
    meta = _front_matter(write_card(tmp_path, _inputs()).markdown)
    assert meta["pretty_name"] == "world-demo — iteration 1"
    assert meta["license"] == "cc-by-4.0"
    assert meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["image-to-text", "object-detection"]
    assert meta["tags"] == ["relabel", "florence-2", "synthetic"]


def test_front_matter_licences_without_sources_and_with_several():
    assert _front_matter(card_markdown(_inputs(sources=[])))["license"] == "other"
    several = [{"name": "a", "licence": "mit"}, {"name": "b", "licence": "cc-by-4.0"}, {"name": "c"}]
    meta = _front_matter(card_markdown(_inputs(sources=several)))
    assert meta["license"] == ["cc-by-4.0", "mit", "unknown"]
    # no world source: nothing says the data is synthetic
    assert meta["tags"] == ["relabel", "florence-2"]


def test_size_category_and_segmentation_follow_the_data():
    many = pl.concat([_images()] * 400)
    masked = frame("labels", [label("human", "object", category="dog", polygon=[[0, 0, 5, 0, 5, 5]])])
    meta = _front_matter(card_markdown(_inputs(images=many, labels=masked)))
    assert meta["size_categories"] == ["1K<n<10K"]
    assert meta["task_categories"] == ["image-segmentation", "object-detection"]


def test_the_markdown_holds_the_real_counts_and_summary(tmp_path):
    markdown = write_card(tmp_path, _inputs()).markdown
    assert "\n# world-demo — iteration 1\n" in markdown
    assert _table_rows(markdown, "### By annotation type")[2:] == ["| text | 3 |", "| region_text | 3 |"]
    assert "| object | 3 |" in _table_rows(markdown, "### By task")
    assert _table_rows(markdown, "### By class (object labels)")[2:] == ["| dog | 2 |", "| cat | 1 |"]
    assert _table_rows(markdown, "### By split")[2:] == ["| train | 2 | 4 |", "| eval | 1 | 2 |"]
    summary = markdown.split("\n## Contents")[0]
    assert "6 labels on 3 images (2 train, 1 eval)" in summary
    assert "3 tasks (brief_caption, detailed_caption, object) and 2 object classes" in summary
    assert "`coco` format" in summary
    assert "min_score: 0.500; statuses: raw, superseded; include_quarantined: no" in summary
    assert "left_out: below_min_score=2, status=1." in summary


def test_the_origin_table_separates_human_specialist_model_and_audit(tmp_path):
    rows = _table_rows(write_card(tmp_path, _inputs()).markdown, "### By origin")
    assert rows[0] == "| origin | kind | versions | labels |"
    assert rows[2:] == [
        "| florence2 | model | iteration-0 | 2 |",
        "| human | human | – | 2 |",
        "| human-audit | human-audit | maria | 1 |",
        "| tinydet | specialist | 1 | 1 |",
    ]


def test_text_statistics_render_as_given_with_two_decimals(tmp_path):
    rows = _table_rows(write_card(tmp_path, _inputs()).markdown, "## Text statistics (table 3)")
    assert rows[0] == "| task | texts | avg_tokens | avg_object_complexity |"
    assert rows[2:] == ["| brief_caption | 2 | 3.50 | 1.25 |", "| detailed_caption | 1 | 7.00 | – |"]
    markdown = write_card(tmp_path, _inputs(text_statistics=None)).markdown
    assert "No text statistics for iteration 1." in markdown


def test_frozen_split_metrics_and_the_sentence_when_there_are_none(tmp_path):
    markdown = write_card(tmp_path, _inputs()).markdown
    section = markdown.split("## Label quality on the frozen split")[1].split("\n## ")[0]
    assert f"Split: images: 1 · audited labels: 1 · digest: {DIGEST}" in section
    assert "| map | 0.412 |" in section and "| caption_cider | – |" in section
    missing = write_card(tmp_path, _inputs(frozen_split_metrics=None, split=None)).markdown
    assert "No evaluation on the frozen split exists for iteration 1." in missing
    assert "| map |" not in missing


def test_lineage_versions_sources_and_reproduce(tmp_path):
    markdown = write_card(tmp_path, _inputs()).markdown
    assert _table_rows(markdown, "## Lineage")[2:] == [
        "| 0 | 4 | annotate/initial_annotations | – | – |",
        "| 1 | 6 | iteration_labels 0 + reannotation 0 | http://mlflow/runs/abc | feedc0de |",
    ]
    assert "| polars | 2.1.0 |" in _table_rows(markdown, "## Versions")
    assert _table_rows(markdown, "## Sources and licences")[2:] == [
        "| world | coco | cc-by-4.0 | data/world/images |",
        "| web | folder | cc-by-4.0 | https://example.org |",
    ]
    reproduce = markdown.split("## Reproduce")[1]
    for stage, md5 in MD5.items():
        assert f"| {stage} | {md5} |" in reproduce
    assert f"```\n{COMMAND}\n```\n" in reproduce
    assert markdown.endswith("```\n")


def test_plots_exist_decode_and_are_linked(tmp_path):
    card = write_card(tmp_path / "card", _inputs())
    assert card.path == tmp_path / "card" / CARD_FILE
    assert card.path.read_text(encoding="utf-8") == card.markdown
    assert set(card.plots) == set(PLOT_FILES)
    for key, path in card.plots.items():
        assert path.name == PLOT_FILES[key] and path.parent == card.path.parent
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
        assert f"]({path.name})" in card.markdown


def test_writing_twice_gives_the_same_bytes(tmp_path):
    first = write_card(tmp_path / "a", _inputs())
    second = write_card(tmp_path / "b", _inputs())
    assert first.path.read_bytes() == second.path.read_bytes()
    for key in PLOT_FILES:
        assert first.plots[key].read_bytes() == second.plots[key].read_bytes()


def test_an_empty_export_still_gets_a_card(tmp_path):
    card = write_card(
        tmp_path,
        _inputs(
            labels=frame("labels", []),
            images=frame("images", []),
            text_statistics=None,
            frozen_split_metrics=None,
        ),
    )
    assert "This export holds 0 labels on 0 images, of 0 tasks (–)" in card.markdown
    assert "No object labels." in card.markdown
    for path in card.plots.values():
        with Image.open(path) as image:
            image.verify()


def test_the_class_plot_shows_the_largest_classes_and_sums_the_rest(tmp_path):
    rows = [
        label("human", "object", category=f"class-{i:02d}", box=[0, 0, 10, 10 + j], image=f"img-{i}")
        for i in range(MAX_PLOTTED_CLASSES + 10)
        for j in range(1 + (i < 3))
    ]
    card = write_card(tmp_path, _inputs(labels=frame("labels", rows)))
    # every class in the table, one bar per shown class plus one for the rest in the plot
    assert len(_table_rows(card.markdown, "### By class (object labels)")) == 2 + MAX_PLOTTED_CLASSES + 10
    with Image.open(card.plots["labels_by_class"]) as image:
        assert image.height == round((1.25 + 0.25 * (MAX_PLOTTED_CLASSES + 1)) * DPI)


@pytest.mark.parametrize(("name", "installed"), [("polars", True), ("no-such-package-relabel", False)])
def test_package_versions(name, installed):
    versions = package_versions([name])
    assert list(versions) == [name]
    assert (versions[name] != NOT_INSTALLED) is installed
