from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from relabel.config import Params, load_params, resolve


def test_the_projects_params_file_loads_with_the_demo_defaults(project_root):
    params = load_params(project_root / "params.yaml")
    assert params.shards.count >= 2
    assert params.world.n_images >= 100
    assert {source.kind for source in params.ingest.sources} == {"coco", "folder"}


def test_a_misspelt_key_is_an_error_not_an_ignored_setting(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"shards": {"cuont": 3}}))
    with pytest.raises(ValidationError, match="cuont"):
        load_params(tmp_path / "params.yaml")


def test_a_source_without_its_paths_is_rejected():
    with pytest.raises(ValidationError, match="needs"):
        Params.model_validate({"ingest": {"sources": [{"name": "x", "kind": "parquet"}]}})


def test_resolve_anchors_relative_paths_at_the_root_and_keeps_absolute_ones(tmp_path):
    assert resolve(tmp_path, "data") == tmp_path / "data"
    assert resolve(tmp_path, "/abs/data") == Path("/abs/data")


def test_the_model_train_params_are_the_training_loops_settings():
    import dataclasses

    from models.training import TrainSettings
    from relabel.config import TrainParams

    assert set(TrainParams.model_fields) == {field.name for field in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**TrainParams(steps=7, task_weights={"<OD>": 2.0}).model_dump())
    assert settings.steps == 7 and settings.task_weights == {"<OD>": 2.0}


def test_task_weights_must_name_task_tokens():
    with pytest.raises(ValidationError, match="task_weights"):
        Params.model_validate({"model": {"train": {"task_weights": {"OD": 1.0}}}})
    with pytest.raises(ValidationError, match="preset"):
        Params.model_validate({"model": {"preset": "huge"}})
