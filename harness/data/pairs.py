"""Loading PKU-SafeRLHF-shaped preference rows and deriving what each method trains on.

Rows come from the tiny world's JSONL, a local file or folder, or a Hugging Face dataset id, all
through `datasets`. Every row is validated before anything is derived from it; a bad row stops
the run with one line naming the dataset, the row and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness.errors import BadInput

ROW_FIELDS: dict[str, type] = {
    "prompt": str,
    "response_0": str,
    "response_1": str,
    "is_response_0_safe": bool,
    "is_response_1_safe": bool,
    "better_response_id": int,
    "safer_response_id": int,
}


def _utf8_text(path: Path) -> str:
    """The file as UTF-8 text, or BadInput naming the line and column of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise BadInput(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})") from None


def check_json_files(files: list[Path], spec: str, split: str) -> None:
    """Name the file and line of the first malformed row, and say so when a split has no rows:
    `datasets` reports both as a bare DatasetGenerationError or StopIteration."""
    rows = 0
    for file in files:
        text = _utf8_text(Path(file))
        if str(file).endswith(".jsonl"):
            # JSON Lines end at "\n" only: str.splitlines would also cut at U+2028, U+0085 and
            # the like, which JSON allows raw inside a string.
            for number, line in enumerate(text.split("\n"), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadInput(f"{file}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(row, dict):
                    raise BadInput(f"{file}:{number}: a row must be a JSON object, got {type(row).__name__}")
                rows += 1
        else:
            try:
                document = json.loads(text) if text.strip() else []
            except json.JSONDecodeError as exc:
                raise BadInput(f"{file}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            rows += len(document) if isinstance(document, list) else 1
    if rows == 0:
        raise BadInput(f"dataset {spec}: split {split!r} is empty ({', '.join(str(f) for f in files)} "
                       f"{'has' if len(files) == 1 else 'have'} no rows)")


def load_rows(spec: str, split: str, *, local_dir: Path | None = None, cache_dir: Path | None = None) -> list[dict]:
    """Rows of `split` from the tiny world (`local_dir`), a local path, or a hub dataset id.

    `cache_dir`: where `datasets` keeps its Arrow copy (default: under HF_HOME). The preflight
    passes a temporary folder, so rows it reads and refuses leave nothing in any cache."""
    import datasets

    # Its "Generating train split" bars would turn a one-line error into several lines.
    datasets.disable_progress_bars()
    # Every load_dataset, even of a local JSON file, sends a HEAD request to S3 to count a
    # "download" (datasets' HF_UPDATE_DOWNLOAD_COUNTS, on by default): a run of the tiny world
    # would contact the network for nothing. Off unless the user asks for it.
    if "HF_UPDATE_DOWNLOAD_COUNTS" not in os.environ:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False

    try:
        if local_dir is not None:
            path = Path(local_dir) / f"{split}.jsonl"
            if not path.is_file():
                raise BadInput(f"dataset {spec}: no split {split!r}")
            check_json_files([path], spec, split)
            ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
        elif Path(spec).is_dir() and (Path(spec) / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(spec)[split]
        elif Path(spec).is_file():
            builder = "json" if spec.endswith((".json", ".jsonl")) else spec.rsplit(".", 1)[-1]
            if builder == "json":
                check_json_files([Path(spec)], spec, split)
            ds = datasets.load_dataset(builder, data_files=spec, split="train", cache_dir=cache_dir)
        elif Path(spec).is_dir():
            files = sorted(Path(spec).glob(f"{split}*.jsonl")) or sorted(Path(spec).glob(f"{split}*.json"))
            if not files:
                raise BadInput(f"dataset {spec}: no {split}*.jsonl file")
            check_json_files(files, spec, split)
            ds = datasets.load_dataset("json", data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
        else:
            ds = datasets.load_dataset(spec, split=split)
    except BadInput:
        raise
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise BadInput(f"dataset {spec} split {split}: {exc}") from None
    except Exception as exc:  # hub/network errors arrive as many types
        raise BadInput(f"dataset {spec} split {split} could not be loaded: {type(exc).__name__}: {exc}") from None
    return [dict(row) for row in ds]


def validate_rows(rows: list[dict], source: str) -> None:
    if not rows:
        raise BadInput(f"dataset {source}: no rows")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadInput(f"dataset {source} row {index}: not a mapping")
        for name, kind in ROW_FIELDS.items():
            if name not in row or row[name] is None:
                raise BadInput(f"dataset {source} row {index}: missing field {name!r}")
            value = row[name]
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if not ok:
                raise BadInput(
                    f"dataset {source} row {index}: field {name!r} must be {kind.__name__}, got {value!r}"
                )
        for name in ("better_response_id", "safer_response_id"):
            if row[name] not in (0, 1):
                raise BadInput(f"dataset {source} row {index}: field {name!r} must be 0 or 1, got {row[name]!r}")
        for name in ("prompt", "response_0", "response_1"):
            if not row[name].strip():
                raise BadInput(f"dataset {source} row {index}: field {name!r} is empty")


def row_kind(row: dict) -> str:
    """harmful when the world says so, else when either response is unsafe (PKU-SafeRLHF)."""
    if row.get("kind") in ("harmful", "benign"):
        return row["kind"]
    return "benign" if row["is_response_0_safe"] and row["is_response_1_safe"] else "harmful"


def preference_pairs(rows: list[dict], *, negative_from: str, only_unsafe_negatives: bool) -> list[dict]:
    """(prompt, chosen, negative) triples; `only_unsafe_negatives` keeps pairs whose y_l is unsafe."""
    id_field = "safer_response_id" if negative_from == "safer" else "better_response_id"
    pairs = []
    for row in rows:
        chosen_id = row[id_field]
        negative_id = 1 - chosen_id
        if only_unsafe_negatives and row[f"is_response_{negative_id}_safe"]:
            continue
        pairs.append(
            {
                "prompt": row["prompt"],
                "chosen": row[f"response_{chosen_id}"],
                "negative": row[f"response_{negative_id}"],
                "kind": row_kind(row),
            }
        )
    return pairs


def eval_prompts(rows: list[dict], limit: int | None = None, group_column: str | None = None,
                 source: str = "dataset") -> list[dict]:
    """Distinct eval prompts with their kind and group; `limit` keeps a balanced head of each kind.

    The group (the value of `group_column`, or the prompt itself) is the unit that intervals
    resample: prompts of one group are not independent.
    """
    seen: set[str] = set()
    prompts = []
    for index, row in enumerate(rows):
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        if group_column is None:
            group = row["prompt"]
        else:
            group = row.get(group_column)
            if group is None or (isinstance(group, str) and not group.strip()):
                raise BadInput(f"dataset {source} row {index}: no value in the group column {group_column!r}")
            group = str(group)
        prompts.append({"prompt": row["prompt"], "kind": row_kind(row), "category": row.get("category"),
                        "group": group})
    if limit is not None:
        by_kind: dict[str, list[dict]] = {}
        for item in prompts:
            by_kind.setdefault(item["kind"], []).append(item)
        share = max(1, limit // max(1, len(by_kind)))
        prompts = [item for items in by_kind.values() for item in items[:share]]
    return prompts


def fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def held_out_split(rows: list[dict], data_cfg, role: str) -> list[dict]:
    """The rows of one side of a split rule over a dataset that has no splits of its own.

    `data.held_out_share` of the prompts go to evaluation (`role="eval"`), the rest to training:
    each row by a hash of its group (`data.group_column`) or else its prompt, so every row of a
    prompt or group lands on one side, the same side on every machine and in every run."""
    share = data_cfg.held_out_share
    column = data_cfg.group_column or data_cfg.columns.prompt or "prompt"
    kept = []
    for index, row in enumerate(rows):
        key = row.get(column)
        if key is None or (isinstance(key, str) and not key.strip()):
            raise BadInput(f"data.held_out_share splits by column {column!r} (data.group_column, else the prompt), "
                           f"and row {index} has no value there")
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()
        held_out = int(digest[:13], 16) / 16**13 < share
        if held_out == (role == "eval"):
            kept.append(row)
    if not kept:
        side = "evaluation" if role == "eval" else "training"
        raise BadInput(f"data.held_out_share={share:g} leaves no {side} rows out of {len(rows)} "
                       f"(split by column {column!r}); change the share or name data.eval_dataset")
    return kept
