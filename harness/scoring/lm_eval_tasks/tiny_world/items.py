"""Loads this folder's JSONL items for lm-eval (`custom_dataset` in the task YAML).

A function rather than the `json` builder with `data_files`, because lm-eval resolves data file
paths against the process's working directory, while this resolves them against this folder, so
the task works from any directory, offline, without writing a datasets cache.
"""

import json
from pathlib import Path

import datasets


def load(data_file: str, **_metadata) -> datasets.DatasetDict:
    path = Path(__file__).resolve().parent / data_file
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
