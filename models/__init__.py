"""The unified sequence-to-sequence model and the specialist adapters.

Knows nothing of Dagster or MLflow. Filled by the initial-annotation and unified-model work;
the foundation only reserves the package.
"""
