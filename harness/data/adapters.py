"""Dataset adapters: one row layout each, read through `datasets`, mapped to what training needs.

Every adapter turns raw rows into two things:

- training examples `{"prompt", "negative", "chosen" (or None), "kind"}` (plus `harm_score` when
  the data has one): the negative is the dispreferred response y_l, the chosen one y_w;
- evaluation prompts `{"prompt", "kind", "category", "group"}` (harness/data/pairs.eval_prompts).

Where the rows carry human judgements, `labels` returns them for checking a cost model on the
user's rows (harness/instruments/user_labels.py): preference pairs `{"prompt", "chosen",
"rejected"}` and per-response harm labels `{"prompt", "response", "harmful"}`.

Layouts (`data.format`), with the column names `data.columns.*` can rename:

- `pku-saferlhf`: prompt, response_0/1, is_response_*_safe, better/safer_response_id.
- `hh-rlhf`: chosen and rejected dialogues, `\\n\\nHuman: … \\n\\nAssistant: …`; the prompt is the
  dialogue up to the last assistant turn, which both must share.
- `negatives`: a prompt and a harmful response, optionally a preferred response and a human harm
  score in [0, 1]. All D²O needs; methods that need y_w use rows that have one (or
  `data.chosen_when_missing`), otherwise they are not applicable.
- `prompts`: evaluation prompts with a kind (harmful / benign; a `kind` column, or
  `data.prompt_kind` for every row); nothing to train on.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

from harness.data import pairs as pair_data
from harness.errors import BadInput


class Adapter:
    format: ClassVar[str]
    defaults: ClassVar[dict[str, str]] = {}

    def __init__(self, data_cfg):
        self.cfg = data_cfg

    def column(self, field: str) -> str:
        return getattr(self.cfg.columns, field, None) or self.defaults.get(field, field)

    def _text(self, row: dict, field: str, index: int, source: str, *, required: bool = True) -> Optional[str]:
        name = self.column(field)
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise BadInput(f"dataset {source} row {index}: missing or empty column {name!r} ({field})")
            return None
        if not isinstance(value, str):
            raise BadInput(f"dataset {source} row {index}: column {name!r} ({field}) must be text, got {value!r}")
        return value

    def examples(self, rows: list[dict], source: str, *, all_pairs: bool) -> list[dict]:
        raise NotImplementedError

    def prompt_rows(self, rows: list[dict], source: str) -> list[dict]:
        """Rows with `prompt` and `kind` (and the group column kept), for pairs.eval_prompts."""
        raise NotImplementedError

    def labels(self, rows: list[dict], source: str) -> dict[str, list[dict]]:
        """The rows' human judgements: {"pairs": [...], "harm": [...]}, either list empty when the
        layout or these rows have none. Every row counts, whatever training filters drop."""
        return {"pairs": [], "harm": []}

    def prompts(self, rows: list[dict], source: str, limit: Optional[int], group_column: Optional[str]) -> list[dict]:
        if not rows:
            raise BadInput(f"dataset {source}: no rows")
        return pair_data.eval_prompts(self.prompt_rows(rows, source), limit, group_column, source)

    def _keep_extra(self, row: dict, out: dict) -> dict:
        category = self.cfg.columns.category
        if category and row.get(category) is not None:
            out["category"] = str(row[category])
        if self.cfg.group_column and self.cfg.group_column in row:
            out[self.cfg.group_column] = row[self.cfg.group_column]
        return out


class PkuSafeRlhf(Adapter):
    format = "pku-saferlhf"

    def _renamed(self, rows: list[dict]) -> list[dict]:
        prompt = self.column("prompt")
        return rows if prompt == "prompt" else [dict(r, prompt=r.get(prompt)) for r in rows]

    def examples(self, rows, source, *, all_pairs):
        rows = self._renamed(rows)
        pair_data.validate_rows(rows, source)
        return pair_data.preference_pairs(rows, negative_from=self.cfg.negative_from,
                                          only_unsafe_negatives=self.cfg.only_unsafe_negatives and not all_pairs)

    def prompt_rows(self, rows, source):
        rows = self._renamed(rows)
        pair_data.validate_rows(rows, source)
        return rows

    def labels(self, rows, source):
        rows = self._renamed(rows)
        pair_data.validate_rows(rows, source)
        pairs = pair_data.preference_pairs(rows, negative_from=self.cfg.negative_from, only_unsafe_negatives=False)
        # The safety flags are the layout's own per-response harm labels (annotators' verdicts).
        harm = [{"prompt": r["prompt"], "response": r[f"response_{i}"], "harmful": not r[f"is_response_{i}_safe"]}
                for r in rows for i in (0, 1)]
        return {"pairs": [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["negative"]} for p in pairs],
                "harm": harm}


def split_dialogue(text: str) -> tuple[str, str]:
    """(prompt, last assistant reply) of an HH-RLHF transcript."""
    marker = "\n\nAssistant:"
    cut = text.rfind(marker)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn")
    prompt, reply = text[:cut], text[cut + len(marker):].strip()
    human = "\n\nHuman:"
    if prompt.count(human) == 1 and prompt.lstrip().startswith(human.strip()):
        prompt = prompt.split(human.strip(), 1)[1]  # a single turn: just the user's words
    return prompt.strip(), reply


class HhRlhf(Adapter):
    format = "hh-rlhf"
    defaults = {"chosen": "chosen", "negative": "rejected"}

    def _pair(self, row: dict, index: int, source: str) -> dict:
        chosen_text = self._text(row, "chosen", index, source)
        rejected_text = self._text(row, "negative", index, source)
        try:
            prompt, chosen = split_dialogue(chosen_text)
            rejected_prompt, negative = split_dialogue(rejected_text)
        except ValueError as exc:
            raise BadInput(f"dataset {source} row {index}: not an HH-RLHF dialogue ({exc})") from None
        if prompt != rejected_prompt:
            raise BadInput(f"dataset {source} row {index}: chosen and rejected dialogues differ before the last reply")
        if not prompt or not negative:
            raise BadInput(f"dataset {source} row {index}: empty prompt or rejected reply")
        return self._keep_extra(row, {"prompt": prompt, "chosen": chosen or None, "negative": negative,
                                      "kind": self.cfg.prompt_kind})

    def examples(self, rows, source, *, all_pairs):
        return [self._pair(row, i, source) for i, row in enumerate(rows)]

    def prompt_rows(self, rows, source):
        return [self._pair(row, i, source) for i, row in enumerate(rows)]

    def labels(self, rows, source):
        pairs = [self._pair(row, i, source) for i, row in enumerate(rows)]
        return {"pairs": [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["negative"]}
                          for p in pairs if p["chosen"]], "harm": []}


class Negatives(Adapter):
    format = "negatives"
    defaults = {"prompt": "prompt", "negative": "negative", "chosen": "chosen", "harm_score": "harm_score"}

    def _score(self, row: dict, index: int, source: str) -> Optional[float]:
        name = self.cfg.columns.harm_score or (self.defaults["harm_score"] if "harm_score" in row else None)
        if name is None:
            return None
        value = row.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
        if not ok:
            raise BadInput(f"dataset {source} row {index}: harm score column {name!r} must be a number in [0, 1], "
                           f"got {value!r}")
        return float(value)

    def examples(self, rows, source, *, all_pairs):
        out = []
        for index, row in enumerate(rows):
            score = self._score(row, index, source)
            if self.cfg.min_harm_score is not None and score is not None and score < self.cfg.min_harm_score:
                continue
            example = {"prompt": self._text(row, "prompt", index, source),
                       "negative": self._text(row, "negative", index, source),
                       "chosen": self._text(row, "chosen", index, source, required=False), "kind": "harmful"}
            if score is not None:
                example["harm_score"] = score
            out.append(self._keep_extra(row, example))
        return out

    def prompt_rows(self, rows, source):
        return [self._keep_extra(row, {"prompt": self._text(row, "prompt", i, source), "kind": "harmful"})
                for i, row in enumerate(rows)]

    def labels(self, rows, source):
        from harness.instruments.harm_model import HARMFUL_AT

        pairs, harm = [], []
        for index, row in enumerate(rows):
            prompt, negative = self._text(row, "prompt", index, source), self._text(row, "negative", index, source)
            chosen = self._text(row, "chosen", index, source, required=False)
            score = self._score(row, index, source)
            if chosen:
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": negative})
            if score is not None:
                # The same cut the suite's harm model is trained and checked with.
                harm.append({"prompt": prompt, "response": negative, "harmful": score >= HARMFUL_AT})
        return {"pairs": pairs, "harm": harm}


class Prompts(Adapter):
    format = "prompts"
    defaults = {"prompt": "prompt", "kind": "kind"}

    def examples(self, rows, source, *, all_pairs):
        raise BadInput(f"dataset {source}: data.format=prompts has no responses to train on "
                       f"(use it for evaluation prompts; train on pku-saferlhf, hh-rlhf or negatives rows)")

    def prompt_rows(self, rows, source):
        out = []
        for index, row in enumerate(rows):
            kind = self.cfg.prompt_kind
            name = self.column("kind")
            if self.cfg.columns.kind or name in row:
                kind = row.get(name)
                if kind not in ("harmful", "benign"):
                    raise BadInput(f"dataset {source} row {index}: kind column {name!r} must be "
                                   f"'harmful' or 'benign', got {kind!r}")
            record = {"prompt": self._text(row, "prompt", index, source), "kind": kind}
            if "source" in row:
                record["category"] = f"{row['source']}/{row.get('category')}"
            out.append(self._keep_extra(row, record))
        return out


ADAPTERS: dict[str, type[Adapter]] = {a.format: a for a in (PkuSafeRlhf, HhRlhf, Negatives, Prompts)}


def adapter_for(data_cfg, fmt: Optional[str] = None) -> Adapter:
    name = fmt or data_cfg.format
    if name not in ADAPTERS:
        raise BadInput(f"unknown data.format {name!r}; known: {', '.join(ADAPTERS)}")
    return ADAPTERS[name](data_cfg)


def needs_chosen(method) -> bool:
    """Whether a method (class or instance) trains on the dataset's preferred response; KTO's
    `kl` role pairs a prompt with another example's chosen response."""
    return method.trains and method.chosen_source == "dataset" and bool({"chosen", "kl"} & set(method.roles))


def with_chosen(examples: list[dict], needs_chosen: bool, fallback: Optional[str], method: str) -> tuple[list[dict], dict]:
    """Examples a method can train on, and where their chosen responses came from.

    A method that needs y_w keeps the rows that have one; `fallback` (data.chosen_when_missing)
    fills the others. With neither, the method is not applicable to the data.
    """
    if not needs_chosen:
        return examples, {"chosen_source": "not used"}
    have = [e for e in examples if e.get("chosen")]
    missing = [e for e in examples if not e.get("chosen")]
    if missing and fallback:
        filled = [dict(e, chosen=fallback, chosen_is_fallback=True) for e in missing]
        return have + filled, {"chosen_source": "dataset, and data.chosen_when_missing where a row has none",
                               "chosen_from_dataset": len(have), "chosen_from_fallback": len(filled)}
    if not have:
        raise BadInput(f"method {method} needs a preferred response and the data has none: not applicable "
                       f"(set data.columns.chosen, or data.chosen_when_missing to a response text)")
    return have, {"chosen_source": "dataset", "chosen_from_dataset": len(have), "rows_without_chosen_dropped": len(missing)}
