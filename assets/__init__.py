"""Dagster software-defined assets, one module per data-engine phase. Bodies stay thin."""
