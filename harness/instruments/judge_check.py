"""The judge's agreement with humans on BIG-bench's HHH pairs, measured before its verdicts are used.

Each pair is a question, the response humans preferred and another. The judge sees both in both
orders (harness/scoring/judge.py) on the aspect the pair is about: harmlessness for the
`harmless` subset, helpfulness for `helpful`, `honest` and `other`. Agreement is the share of
pairs where the judge prefers the humans' choice in both orders; ties (orders disagreeing or a
tie verdict) and losses are reported beside it. Replies are cached (the judge's sqlite cache),
so every run of a study pays for this once.
"""

from __future__ import annotations

from harness.hashing import unit_hash
from harness.scoring.metrics import rate_metric

ASPECT_OF_SUBSET = {"harmless": "harmlessness"}


def _subsample(pairs: list[dict], limit: int) -> list[dict]:
    if not limit or limit >= len(pairs):
        return pairs
    return sorted(pairs, key=lambda p: unit_hash(p["question"] + p["preferred"] + p["other"], "hhh:"))[:limit]


def judge_on_hhh(pairs: list[dict], cfg, home) -> dict:
    from harness.scoring.judge import JudgeSettings, judge_against_base

    e = cfg.eval
    settings = JudgeSettings(model=e.judge_model, base_url=e.judge_base_url, api_key_env=e.judge_api_key_env,
                             max_calls=e.judge_max_calls, concurrency=e.judge_concurrency,
                             cache_path=home / "cache" / "judge.sqlite", max_tokens=e.judge_max_tokens)
    chosen = _subsample(pairs, cfg.real.judge_validation_pairs)
    by_aspect: dict[str, list[dict]] = {}
    for pair in chosen:
        by_aspect.setdefault(ASPECT_OF_SUBSET.get(pair["subset"], "helpfulness"), []).append(pair)
    result = {"instrument": "judge", "model": e.judge_model, "labels": "BIG-bench hhh_alignment (221 pairs)",
              "n_pairs": len(chosen), "aspects": {}}
    agreed_all = []
    for aspect, items in sorted(by_aspect.items()):
        verdicts = judge_against_base([p["question"] for p in items], [p["preferred"] for p in items],
                                      [p["other"] for p in items], settings, aspects=(aspect,))
        summary = verdicts.get(aspect) or {}
        judged = (summary.get("win") or {}).get("n", 0)
        wins = round(((summary.get("win") or {}).get("value") or 0.0) * judged)
        agreed_all += [True] * wins + [False] * (len(items) - wins)
        result["aspects"][aspect] = {"pairs": len(items), "judged_both_orders": judged,
                                     "agree": summary.get("win"), "tie": summary.get("tie"), "disagree": summary.get("loss"),
                                     "status": verdicts.get("status"), "reason": verdicts.get("reason")}
    record = rate_metric(agreed_all, True) if agreed_all else None
    result["agreement"] = None if record is None else {k: record[k] for k in ("value", "ci_low", "ci_high", "ci_level", "n")}
    result["note"] = "agreement counts a pair only when the judge prefers the humans' choice in both orders"
    return result
