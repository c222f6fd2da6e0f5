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
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    prompts_file, policy = Path(argv[0]), Path(argv[1])
    if not prompts_file.is_file() or not (policy / "config.json").is_file():
        print(f"generate_memory.py: needs a prompts .jsonl and a policy folder with config.json, got "
              f"{prompts_file} and {policy}", file=sys.stderr)
        return 2
    from harness.config import resolve_config
    from harness.models.loading import load_policy
    from harness.prompting import format_prompt
    from harness.stages.generate import local_answers

    cfg = resolve_config(method="d2o", preset="real-smollm2")
    try:
        rows = [json.loads(line) for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = [row["prompt"] for row in rows]
    except (ValueError, KeyError, TypeError) as exc:
        print(f"generate_memory.py: {prompts_file} is not a .jsonl of rows with a prompt: {exc}", file=sys.stderr)
        return 2
    if not texts:
        print(f"generate_memory.py: {prompts_file} holds no prompts", file=sys.stderr)
        return 2
    model, tokenizer = load_policy(str(policy), dtype=cfg.model.dtype)
    texts = sorted((format_prompt(text, cfg.model.prompt_format, tokenizer) for text in texts),
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
