"""What every stage receives: the run plan, the run directory and the resolved assets.

Each stage is a module of this package with one entry point, `run(ctx) -> dict` (the summary
its COMPLETE marker keeps); harness/pipeline.py decides which stages run, in what order, and
records their state. The stages share, through the context, what is built once per run: the
training examples each reference role and the trainer read are selected once and tokenised once
per tokenizer (`encoded_examples`), not re-read from the run directory at every use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from harness.errors import RunFailure
from harness.logprobs import encode_pair
from harness.models.loading import load_policy
from harness.prompting import format_prompt

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.plan import RunPlan
    from harness.registry import Method
    from harness.rundir import RunDir
    from harness.suites import Assets


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunContext:
    plan: "RunPlan"
    run_dir: "RunDir"
    home: Path
    assets: "Assets"
    out_dir: Path
    started_at: str = field(default_factory=now)
    progress: Callable[[str], None] = lambda message: None
    # How this run's configuration was chosen (a tuning study's record), carried into its entry.
    selection: Optional[dict] = None
    # Built once per run (per process): the selected training examples, and their token ids per
    # tokenizer source (the model spec the tokenizer was loaded with).
    _examples: Optional[list[dict]] = field(default=None, repr=False)
    _samples: Optional[dict] = field(default=None, repr=False)
    _encoded: dict[str, list[dict]] = field(default_factory=dict, repr=False)

    @property
    def cfg(self) -> "RunConfig":
        return self.plan.cfg

    @property
    def method(self) -> "Method":
        return self.plan.method

    def prompt_text(self, prompt: str, tokenizer) -> str:
        return format_prompt(prompt, self.cfg.model.prompt_format, tokenizer)

    def load_policy(self, spec: str, *, quantized: bool = False):
        """`quantized`: QLoRA's 4-bit base (train.lora.quantize_4bit) instead of `model.dtype`."""
        quantization = None
        if quantized:
            from harness.lora import quantization_config
            from harness.models.loading import DTYPES

            quantization = quantization_config(DTYPES[self.cfg.model.dtype])
        return load_policy(spec, dtype=self.cfg.model.dtype, gguf_file=self.cfg.model.gguf_file,
                           quantization_config=quantization)

    def training_examples(self) -> tuple[list[dict], Optional[dict]]:
        """The examples the method trains on and the self-samples they carry, read from the
        run directory once: Self-Align SFT's chosen replaced by its safe self-sample, prompts the
        anchor filter left without samples dropped."""
        if self._examples is None:
            layout = self.run_dir.layout
            samples = layout.samples.read() if self.method.draws_self_samples() else None
            safe = layout.safe_chosen.read() if self.method.chosen_source == "safe_self_samples" else None
            self._examples = select_examples(self.method, layout.train_examples.read(), samples, safe)
            self._samples = samples
        return self._examples, self._samples

    def encoded_examples(self, tokenizer_source: str, tokenizer) -> list[dict]:
        """Training rows: token ids for every role the method needs (no reference values yet),
        tokenised once per tokenizer source. Callers get fresh row dicts (the trainer adds its
        `ref_<role>` columns to them) over shared token lists."""
        if tokenizer_source not in self._encoded:
            examples, samples = self.training_examples()
            self._encoded[tokenizer_source] = encode_examples(self.plan, examples, samples, tokenizer)
        return [dict(row) for row in self._encoded[tokenizer_source]]


def select_examples(method: "Method", examples: list[dict], samples: Optional[dict],
                    safe: Optional[dict]) -> list[dict]:
    """The examples a method trains on, from the data stage's `examples`, the self-samples (for a
    method that draws them) and Self-Align SFT's `safe` choice among them (for that method):
    what the reference_logps and train stages encode, and what `--dry-run` keys their cache by."""
    if method.chosen_source == "safe_self_samples":
        examples = [dict(e, chosen=safe[e["prompt"]]["text"], chosen_ended=safe[e["prompt"]]["ended"])
                    for e in examples if e["prompt"] in safe]
        if not examples:
            raise RunFailure("the cost model marks none of the base policy's self-samples safe")
    if "samples" in method.roles:
        # An anchor filter leaves out prompts none of whose samples passed (self_samples' summary).
        examples = [e for e in examples if e["prompt"] in samples["texts"]]
        if not examples:
            raise RunFailure("the anchor filter kept no self-sample for any training prompt")
    return examples


def encode_examples(plan: "RunPlan", examples: list[dict], samples: Optional[dict], tokenizer) -> list[dict]:
    max_length = plan.cfg.train.max_length
    rows = []
    for index, example in enumerate(examples):
        text = format_prompt(example["prompt"], plan.cfg.model.prompt_format, tokenizer)
        row = {"prompt_index": index, "prompt": example["prompt"]}
        for role in plan.method.roles:
            if role == "samples":
                encoded = [encode_pair(tokenizer, text, s, max_length, ended=e)
                           for s, e in zip(samples["texts"][example["prompt"]], samples["ended"][example["prompt"]])]
                row["samples_ids"] = [e.input_ids for e in encoded]
                row["samples_start"] = [e.response_start for e in encoded]
                continue
            if role == "kl":
                # KTO's KL reference point: this prompt paired with another example's response.
                source, field_name = examples[(index + 1) % len(examples)], "chosen"
            else:
                source, field_name = example, role
            # Dataset responses are complete; a self-sample chosen by Self-Align SFT may be cut.
            encoded = encode_pair(tokenizer, text, source[field_name], max_length,
                                  ended=source.get(f"{field_name}_ended", True))
            row[f"{role}_ids"], row[f"{role}_start"] = encoded.input_ids, encoded.response_start
        rows.append(row)
    return rows
