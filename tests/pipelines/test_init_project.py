"""``relabel init``: a project on your own photos whose params load, whose DVC stages depend only
on the sources given, and whose ontology comes from the COCO file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from models.specialists.photo_detectors import COCO_CLASSES
from pipelines import cli
from pipelines.init_project import InitError, Sources, init_project
from relabel.config import load_params


def test_init_on_a_coco_collection_writes_a_project_without_the_world(
    coco_mini_dir: Path, tmp_path: Path, capsys
) -> None:
    project = tmp_path / "photos"
    instances = coco_mini_dir / "annotations" / "instances.json"
    captions = coco_mini_dir / "annotations" / "captions.json"
    code = cli.main(
        [
            "init",
            str(project),
            "--images",
            str(coco_mini_dir / "images"),
            "--coco",
            str(instances),
            "--captions",
            str(captions),
        ]
    )
    assert code == 0
    assert f"relabel --root {project} demo" in capsys.readouterr().out
    params = load_params(project / "params.yaml")
    assert params.world is None
    # every photo is in the COCO file: one coco source, no folder source
    assert [(s.kind, s.images, s.instances, s.captions) for s in params.ingest.sources] == [
        ("coco", str(coco_mini_dir / "images"), str(instances), str(captions))
    ]
    kinds = {spec.kind for spec in params.annotate.perception if spec.enabled}
    assert {"centernet_onnx", "nanodet_onnx", "blazeface_onnx", "trained_detector", "rapidocr"} == kinds
    # CenterNet's repeated peaks on one object must not dilute the fused score
    assert params.annotate.consensus.score_by == "source"
    assert params.filter.region.min_score_for("consensus@1", "object") == 0.4
    assert params.audit.auditor == "accept-all" and params.review.budget == 0
    assert params.filter.gates.min_labelled_share < 0.9
    ontology = [c["name"] for c in json.loads((project / params.annotate.ontology).read_text())["categories"]]
    coco_names = [c["name"] for c in json.loads(instances.read_text())["categories"]]
    assert ontology == [*coco_names, "face"]
    assert params.export.categories == tuple(coco_names)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "world" not in stages
    assert stages["ingest"]["deps"] == [str(coco_mini_dir / "images"), str(instances), str(captions)]
    assert (project / "workspace.yaml").is_file()


def _photos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        Image.new("RGB", (32, 24), (200, 90, 40)).save(folder / name)
    return folder


def test_a_folder_of_photos_with_alt_text_gets_a_folder_source_and_the_coco_names(tmp_path: Path) -> None:
    images = _photos(tmp_path / "images", ["a.jpg", "b.png"])
    sidecar = tmp_path / "alt.jsonl"
    sidecar.write_text(json.dumps({"file_name": "a.jpg", "alt_text": "a dog on a sofa"}) + "\n")
    init_project(tmp_path / "project", Sources(images=images, alt_text=sidecar))
    params = load_params(tmp_path / "project" / "params.yaml")
    assert [(s.kind, s.sidecar) for s in params.ingest.sources] == [("folder", str(sidecar))]
    ontology = [
        c["name"] for c in json.loads((tmp_path / "project" / "ontology.json").read_text())["categories"]
    ]
    assert ontology == [*COCO_CLASSES, "face"]


def test_photos_the_coco_file_does_not_list_come_in_through_a_folder_source(tmp_path: Path) -> None:
    images = _photos(tmp_path / "images", ["listed.jpg", "unlisted.jpg"])
    coco = tmp_path / "instances.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "listed.jpg", "width": 32, "height": 24}],
                "annotations": [],
                "categories": [{"id": 1, "name": "dog"}],
            }
        )
    )
    init_project(tmp_path / "project", Sources(images=images, coco=coco))
    params = load_params(tmp_path / "project" / "params.yaml")
    assert [s.kind for s in params.ingest.sources] == ["coco", "folder"]


def test_init_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    images = _photos(tmp_path / "images", ["a.jpg"])
    with pytest.raises(InitError, match="is not a folder"):
        init_project(tmp_path / "p1", Sources(images=tmp_path / "missing"))
    with pytest.raises(InitError, match="holds no image"):
        init_project(tmp_path / "p2", Sources(images=_photos(tmp_path / "empty", [])))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InitError, match="no readable categories"):
        init_project(tmp_path / "p3", Sources(images=images, coco=bad))
    init_project(tmp_path / "p4", Sources(images=images))
    with pytest.raises(InitError, match="--force"):
        init_project(tmp_path / "p4", Sources(images=images))
    init_project(tmp_path / "p4", Sources(images=images), force=True)


def test_the_cli_says_why_init_failed_in_one_line(tmp_path: Path, capsys) -> None:
    assert cli.main(["init", str(tmp_path / "p"), "--images", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.strip() == f"relabel init: --images {tmp_path / 'nowhere'} is not a folder"
