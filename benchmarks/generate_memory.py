"""Benchmark: peak resident memory of the generate stage's heaviest batch.

    .venv/bin/python benchmarks/generate_memory.py EVAL_PROMPTS.jsonl POLICY_DIR

The `eval.batch_size` longest of a run's evaluation prompts (its `data/eval_prompts.jsonl`),
rendered as real-smollm2 renders them, answered in one batch as the generate stage answers them
(`harness.stages.generate.local_answers`: greedy, left-padded, `eval.max_new_tokens`), in a
fresh process; the high-water mark is reset once the policy is loaded, so the figure is the
loaded policy plus the batch's work. A whole run measured with fewer prompts
(benchmarks/RESULTS.md, "A whole run through every stage") does not hold the longest prompts of
the full split; this holds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def high_water_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("needs Linux's /proc/self/status")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    from harness.config import resolve_config
    from harness.models.loading import load_policy
    from harness.prompting import format_prompt
    from harness.stages.generate import local_answers

    cfg = resolve_config(method="d2o", preset="real-smollm2")
    rows = [json.loads(line) for line in Path(argv[0]).read_text(encoding="utf-8").splitlines() if line.strip()]
    model, tokenizer = load_policy(argv[1], dtype=cfg.model.dtype)
    texts = sorted((format_prompt(r["prompt"], cfg.model.prompt_format, tokenizer) for r in rows),
                   key=len)[-cfg.eval.batch_size:]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    loaded = high_water_mb()
    Path("/proc/self/clear_refs").write_text("5")
    local_answers(cfg.eval, model, tokenizer, texts, "generate")
    print(json.dumps({"prompts": len(texts), "of": len(rows), "longest_tokens": max(lengths),
                      "shortest_tokens": min(lengths), "policy_loaded_mb": round(loaded),
                      "generate_peak_mb": round(high_water_mb()), "batch_size": cfg.eval.batch_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
