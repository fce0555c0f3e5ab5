"""relabel: a data engine for iterative dataset bootstrapping, after Florence-2's.

The plain, framework-free core: the label store (``relabel.labels``), configuration
(``relabel.config``), shard assignment (``relabel.shards``), ingest (``relabel.ingest``), the
embedded world (``relabel.world``) and data versioning (``relabel.versioning``). Dagster wiring
lives in the ``assets`` and ``pipelines`` packages.
"""
