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
