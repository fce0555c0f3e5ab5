"""DVC versions of what a stage writes: committed, pushed, restorable byte for byte."""

import shutil

import yaml
from dvc.repo import Repo

from relabel.versioning import commit_stage, ensure_repo, file_md5, restore_file


def _dvc_project(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"ingest": {"cmd": "true", "outs": ["data/ingest"]}}})
    )
    ensure_repo(tmp_path, "local", "remote")
    shard = tmp_path / "data" / "ingest" / "labels" / "shard-00.parquet"
    shard.parent.mkdir(parents=True)
    return shard


def test_commit_records_the_stage_in_dvc_lock_and_pushes_to_the_local_remote(tmp_path):
    shard = _dvc_project(tmp_path)
    shard.write_bytes(b"first version")
    version = commit_stage(tmp_path, "ingest", shard, push=True)
    assert version.md5 == file_md5(shard)
    assert version.path == "data/ingest/labels/shard-00.parquet"
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert lock["stages"]["ingest"]["outs"][0]["md5"] == version.stage_hash
    assert (tmp_path / "remote" / "files" / "md5" / version.md5[:2] / version.md5[2:]).is_file()
    with Repo(str(tmp_path)) as repo:
        assert repo.status() == {}
        assert repo.status(cloud=True) == {}


def test_an_earlier_version_comes_back_byte_for_byte_from_the_remote(tmp_path):
    shard = _dvc_project(tmp_path)
    shard.write_bytes(b"first version")
    first = commit_stage(tmp_path, "ingest", shard, push=True)
    shard.write_bytes(b"second version, different bytes")
    second = commit_stage(tmp_path, "ingest", shard, push=True)
    assert first.md5 != second.md5 and first.stage_hash != second.stage_hash
    # a machine whose cache never held the first version still gets it from the remote
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    restored = restore_file(tmp_path, first.md5, tmp_path / "restored.parquet")
    assert restored.read_bytes() == b"first version"


def test_restoring_a_hash_nobody_holds_is_a_clear_error(tmp_path):
    _dvc_project(tmp_path)
    try:
        restore_file(tmp_path, "0" * 32, tmp_path / "x")
    except FileNotFoundError as error:
        assert "0" * 32 in str(error)
    else:
        raise AssertionError("restore of an unknown hash did not fail")


def test_dvc_checkout_and_pull_bring_a_deleted_stage_output_back(tmp_path):
    shard = _dvc_project(tmp_path)
    shard.write_bytes(b"committed bytes")
    commit_stage(tmp_path, "ingest", shard, push=True)
    with Repo(str(tmp_path)) as repo:
        shutil.rmtree(tmp_path / "data" / "ingest")
        repo.checkout()
        assert shard.read_bytes() == b"committed bytes"
        shutil.rmtree(tmp_path / "data" / "ingest")
        shutil.rmtree(tmp_path / ".dvc" / "cache")
        repo.pull()
        assert shard.read_bytes() == b"committed bytes"
