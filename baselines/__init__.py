"""Baseline methods, one module each (dpo.py two), named in harness/registry.py's METHODS."""
