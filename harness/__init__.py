"""d2o-bench: a reproducible benchmark harness for alignment from negative samples."""

__version__ = "0.1.0"
