"""The harness's home (`$D2O_BENCH_HOME`) and its content-addressed JSON caches, shared by every run.

Work that is shared across runs (self-samples, reference log-probs, the base policy's
evaluation) is cached under `$D2O_BENCH_HOME/cache/<kind>/<key>.json`, keyed by content hashes,
so a sweep pays for it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from harness.rundir import write_json_atomic

log = logging.getLogger("d2o_bench")


def bench_home() -> Path:
    return Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")


class JsonCache:
    """Content-addressed JSON blobs shared by all runs (self-samples, log-probs, base evals).

    An entry is `{"sha256": ..., "value": ...}`, the hash over the value's canonical JSON: an
    entry that no longer parses or no longer matches its hash (a truncated or edited file) is
    ignored with a warning and recomputed, never used. Entries written before the hash was
    recorded (a bare value) are read as they are."""

    def __init__(self, home: Path, kind: str):
        self.root = home / "cache" / kind

    @staticmethod
    def _digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str):
        path = self.root / f"{key}.json"
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("ignoring unreadable cache entry %s; recomputing it", path)
            return None
        if isinstance(stored, dict) and set(stored) == {"sha256", "value"}:
            if stored["sha256"] != self._digest(stored["value"]):
                log.warning("ignoring cache entry %s: its content does not match its sha256; recomputing it", path)
                return None
            return stored["value"]
        return stored

    def put(self, key: str, value) -> None:
        write_json_atomic(self.root / f"{key}.json", {"sha256": self._digest(value), "value": value})
