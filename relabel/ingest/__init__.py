"""Ingest: input collections (COCO JSON, image folders, parquet) into the label store, per shard.

Two steps, so that the expensive work runs per shard (one Dagster partition each):

``catalog_sources``
    one cheap pass over all sources: lists every image record, hashes each file (the SHA-256
    is the image id) and assigns it a shard. What no shard can take (an unreadable source
    file, an image whose file is missing, the labels of such an image) is quarantined here.
``ingest_shard``
    for the images of one shard: decodes each in full, builds the images and labels tables
    and checks the labels (``validate_labels``). Everything dropped is quarantined with a
    reason code, a readable detail and the raw record.

Nothing is lost: ``ShardIngest.check_accounting`` checks that every image and label record of
a shard was kept or quarantined, and ``SourceCatalog.check_accounting`` that the shards and the
catalog's quarantine together account for every record read.
"""

from relabel.ingest.catalog import AccountingError, SourceCatalog, catalog_sources
from relabel.ingest.shard import ShardIngest, ingest_shard
from relabel.ingest.validate import BOX_TOLERANCE, LABEL_CHECKS, validate_labels

__all__ = [
    "BOX_TOLERANCE",
    "LABEL_CHECKS",
    "AccountingError",
    "ShardIngest",
    "SourceCatalog",
    "catalog_sources",
    "ingest_shard",
    "validate_labels",
]
