"""Content hashes of model weights and of data, for cache keys and provenance."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from harness import atomic

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# The memo of a folder's weight digest: written beside the weights, so not part of the content.
WEIGHTS_MEMO = ".d2o-bench-weights-sha256.json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of one file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def normalise(text: str) -> str:
    """Lower-case words of letters and digits, single-spaced: text that differs only in case,
    punctuation or spacing is the same text."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def unit_hash(text: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the normalised text: a split or order drawn from it never
    depends on row order (the real suite's splits, the judge's HHH subset)."""
    digest = hashlib.sha256((salt + normalise(text)).encode()).hexdigest()
    return int(digest[:12], 16) / float(1 << 48)


def weights_sha256(model_dir: str | os.PathLike, *, remember: bool = True) -> str:
    """SHA-256 over the weight files of a local checkpoint directory (names and bytes).

    A 7B checkpoint takes tens of seconds to hash, so the digest is memoised next to the files
    (keyed by their sizes and mtimes) where the directory is writable; `remember=False` (a dry
    run, which writes nothing) reads a memo but leaves none.
    """
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files under {root}")
    stamp = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo = root / WEIGHTS_MEMO
    try:
        cached = json.loads(memo.read_text())
        if cached.get("stamp") == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    result = digest.hexdigest()
    if not remember:
        return result
    try:
        atomic.write_json(memo, {"stamp": stamp, "sha256": result})
    except OSError:
        pass
    return result
