"""One entry point over the source readers, by ``SourceParams.kind``."""

from __future__ import annotations

from pathlib import Path

from relabel.config import SourceParams
from relabel.ingest.coco import read_coco
from relabel.ingest.folder import read_folder
from relabel.ingest.parquet import read_parquet_source
from relabel.ingest.records import SourceRecords


def read_source(source: SourceParams, index: int, root: Path, data_dir: Path) -> SourceRecords:
    """The raw records of the ``index``-th source. Deterministic: the catalog and every shard
    read a source the same way and so see the same records."""
    if source.kind == "coco":
        return read_coco(source, index, root)
    if source.kind == "folder":
        return read_folder(source, index, root)
    return read_parquet_source(source, index, root, data_dir)
