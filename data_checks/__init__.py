"""Label-quality gates: blocking Dagster asset checks over the label store."""
