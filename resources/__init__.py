"""What every asset shares: the Dagster resources of the external systems (project files,
DVC, MLflow), the shard IO manager, the partitions and the layout of every asset's key and
files. Nothing here imports the assets or the wiring (``pipelines``)."""
