"""``torchrun -m pipelines.train`` finds the corpus where the corpus asset writes it (its DDP
run is in tests/models/test_training.py, beside the training loop it drives)."""

import pytest

from pipelines.train import corpus_folder


def test_the_entry_point_finds_the_newest_iterations_corpus_where_the_corpus_asset_writes_it(tmp_path):
    examples = tmp_path / "corpus" / "examples"
    for iteration in (0, 2, 10):
        (examples / f"iteration-{iteration}").mkdir(parents=True)
    assert corpus_folder(tmp_path) == examples / "iteration-10"
    assert corpus_folder(tmp_path, 2) == examples / "iteration-2"
    with pytest.raises(SystemExit, match="no corpus in"):
        corpus_folder(tmp_path / "elsewhere")
