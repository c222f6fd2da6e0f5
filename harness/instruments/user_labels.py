"""The suite's cost model checked on the human judgements in a user's own training rows.

A suite's cost model carries its agreement with the labels it was validated on (the real suite's:
pyrit's human harm scores). A user who trains on their own rows (`data.train_dataset`) is then
measured by that model on the suite's evaluation prompts; before its numbers are read, the entry
also shows whether it knows the user's domain, on the judgements the user's rows carry:

- preference pairs (HH-RLHF chosen/rejected, PKU-SafeRLHF's safer response, a negatives row with a
  preferred response): AUROC of cost(rejected) over cost(chosen), both responses of every pair
  pooled, and the share of pairs whose rejected response costs more (ties count half);
- harm labels (PKU-SafeRLHF's per-response safety flags, a negatives row's human harm score cut at
  the harm model's own threshold): AUROC of cost over "labelled harmful".

Rows used: the user's training split (`data.train_split`), the first MAX_PAIRS pairs and
MAX_HARM_LABELS labelled responses in file order. No instrument the harness fits ever sees these
rows (the real suite's harm model is fitted on its own package labels), so they are held out for
it although the policy trains on them. Each AUROC has a bootstrap interval over prompts, and the
refusal-rule baseline ("every non-refusal is harmful") beside it, as the package-label check has.
Rows without either kind of judgement say so instead of carrying a number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

# Enough for a clear interval, few enough to score on a CPU in well under a minute.
MAX_PAIRS = 256
MAX_HARM_LABELS = 512
# Bumped whenever the record below changes, so cached records are not reused.
CHECK_VERSION = 1

NO_LABELS = ("no labels in the user's rows (no chosen/rejected pair and no harm score): "
             "the cost model is not checked on them")


def capped(labels: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The judgements the check reads: the first ones of each kind, in file order."""
    return {"pairs": labels["pairs"][:MAX_PAIRS], "harm": labels["harm"][:MAX_HARM_LABELS]}


def _auroc_with_baseline(scores: list[float], labels: list[bool], prompts: list[str], responses: list[str]) -> dict:
    from harness.instruments.harm_model import auroc_interval
    from harness.instruments.refusal import is_refusal

    baseline = [0.0 if is_refusal(r) else 1.0 for r in responses]
    return {"auroc": _clustered_by_prompt(auroc_interval(scores, labels, prompts)),
            "baseline_refusal_rules_auroc": _clustered_by_prompt(auroc_interval(baseline, labels, prompts))}


def _clustered_by_prompt(record: dict) -> dict:
    # harm_model names its clusters objectives (pyrit's unit); here they are the user's prompts.
    return dict(record, ci_method="cluster bootstrap (prompts)")


def summarise(labels: dict[str, list[dict]], pair_costs: list[tuple[float, float]], harm_costs: list[float],
              source: dict, rows_used: str) -> dict:
    """The check's record from the judgements and the cost model's scores of their responses."""
    record = {"dataset": source["spec"], "format": source["format"], "split": source["split"],
              "fingerprint": source["fingerprint"], "rows_used": rows_used}
    if not labels["pairs"] and not labels["harm"]:
        return dict(record, labels=NO_LABELS)
    if labels["pairs"]:
        pairs = labels["pairs"]
        scores = [c for chosen, rejected in pair_costs for c in (chosen, rejected)]
        flags = [flag for _ in pairs for flag in (False, True)]
        prompts = [p["prompt"] for p in pairs for _ in (0, 1)]
        responses = [text for p in pairs for text in (p["chosen"], p["rejected"])]
        agree = sum(1.0 if rejected > chosen else 0.5 if rejected == chosen else 0.0 for chosen, rejected in pair_costs)
        record["pairs"] = {
            "labels": "rejected over chosen: the dispreferred response of each pair (which need not be harmful) "
                      "against the preferred one, both responses of every pair pooled",
            "n_pairs": len(pairs), **_auroc_with_baseline(scores, flags, prompts, responses),
            "pair_agreement": agree / len(pairs),
        }
    if labels["harm"]:
        harm = labels["harm"]
        record["harm_labels"] = {
            "labels": "harmful per the rows' own labels (PKU-SafeRLHF safety flags, or a harm score at or above "
                      "the harm model's threshold)",
            **_auroc_with_baseline(harm_costs, [h["harmful"] for h in harm], [h["prompt"] for h in harm],
                                   [h["response"] for h in harm]),
        }
        if record["harm_labels"]["auroc"]["value"] is None:
            record["harm_labels"]["note"] = "one class only among the labelled responses: no AUROC"
    return record


def check_cost_model(cost_spec: str, labels: dict[str, list[dict]], source: dict, cfg, home: Path) -> dict:
    """The record for these judgements, computed once per cost model, judgements and template."""
    from harness.hashing import sha256_json
    from harness.models.loading import load_score_model, model_identity
    from harness.cache import JsonCache
    from harness.scoring.score_models import score_responses

    rows_used = (f"the user's {source['split']!r} split (data.train_split): the rows the policy trains on, which "
                 f"no instrument of the harness was fitted on; the first {MAX_PAIRS} pairs and "
                 f"{MAX_HARM_LABELS} labelled responses in file order")
    if not labels["pairs"] and not labels["harm"]:
        return summarise(labels, [], [], source, rows_used)
    key = sha256_json({"cost": model_identity(cost_spec)["sha256"], "labels": labels,
                       "template": cfg.eval.scorer_template, "version": CHECK_VERSION})[:24]
    cache = JsonCache(home, "user_label_checks")
    costs: Optional[dict] = cache.get(key)
    if costs is None:
        model, tokenizer = load_score_model(cost_spec, dtype=cfg.model.dtype)
        prompts = [p["prompt"] for p in labels["pairs"] for _ in (0, 1)] + [h["prompt"] for h in labels["harm"]]
        responses = [t for p in labels["pairs"] for t in (p["chosen"], p["rejected"])] + \
            [h["response"] for h in labels["harm"]]
        values = score_responses(model, tokenizer, prompts, responses, template=cfg.eval.scorer_template,
                                 batch_size=cfg.eval.scorer_batch_size, desc="cost model on the user's labels")
        n = 2 * len(labels["pairs"])
        costs = {"pairs": [values[i:i + 2] for i in range(0, n, 2)], "harm": values[n:]}
        cache.put(key, costs)
    return summarise(labels, [tuple(c) for c in costs["pairs"]], costs["harm"], source, rows_used)
