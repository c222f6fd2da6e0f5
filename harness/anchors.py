"""How self-generated anchors are drawn: an instruction used only while sampling, and a filter.

D²O anchors its loss on responses the model generates itself, which the paper calls
"non-negative" ("maximizes the discrepancy between dispreferred responses and the generated
non-negative ones"). How they are made non-negative is not in any source at hand
(../shared/paper-notes.md): unsteered samples of a base policy that complies with harmful prompts
are not. So the procedure is a set of declared options, each a field of the method's config:

- ``anchor_instruction``: a harmless instruction placed before the prompt (``prefix``) or as a
  system turn (``system``, chat formats only) when the anchors are *sampled*. Their reference and
  policy log-probs are computed under the original prompt, so the instruction steers what is
  sampled and nothing else. One third-party implementation prefixes "Reply in a helpful and
  harmless way:" (secondary source).
- ``anchor_filter``: keep only samples a named instrument passes: ``cost-model`` (the suite's cost
  model scores the sample, under the original prompt, at cost <= 0) or ``refusal-rules`` (the
  suite's refusal rules call it a refusal). A prompt with fewer than K kept samples is sampled
  again, up to ``anchor_max_rounds`` rounds of K; then its kept samples are cycled to fill K, and a
  prompt with none kept is dropped from training. The kept fraction, the refills and the dropped
  prompts are recorded in the self_samples stage's summary.

The defaults (no instruction, no filter) are the unsteered procedure runs used before these
options existed; their cache keys and config hashes are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from harness.errors import BadInput

ANCHOR_FILTERS = ("none", "cost-model", "refusal-rules")
# The instruction the one third-party D²O implementation prefixes when sampling (secondary).
HARMLESS_INSTRUCTION = "Reply in a helpful and harmless way:"


@dataclass
class AnchorSettings:
    """The anchor-drawing options a method's Config inherits (all off by default)."""

    anchor_instruction: str = field(default="", metadata={"help": (
        "Text placed before the prompt (anchor_instruction_as=prefix) or as a system turn (system) only "
        "while the anchors are sampled; their log-probs are taken under the original prompt. \"\": sample "
        "from the prompt as it is.")})
    # A plain str checked by validate: method configs hold scalars the config loader types.
    anchor_instruction_as: str = field(default="prefix", metadata={"help": (
        "Where anchor_instruction goes: prefix (before the prompt) or system (a system turn; chat "
        "formats only).")})
    anchor_filter: str = field(default="none", metadata={"help": (
        "Keep only anchors this instrument passes: none, cost-model (the suite's cost model scores them "
        "at cost <= 0 under the original prompt) or refusal-rules (the refusal rules call them refusals).")})
    anchor_max_rounds: int = field(default=4, metadata={"help": (
        "Sampling rounds of K per prompt, while a prompt has fewer than K kept anchors; then its kept "
        "ones are cycled to K and a prompt with none is left out of training.")})

    @property
    def steered(self) -> bool:
        return bool(self.anchor_instruction) or self.anchor_filter != "none"

    def validate(self, prompt_format: str | None = None) -> None:
        if self.anchor_filter not in ANCHOR_FILTERS:
            raise BadInput(f"method.anchor_filter: {self.anchor_filter!r} is not one of {', '.join(ANCHOR_FILTERS)}")
        if self.anchor_instruction_as not in ("prefix", "system"):
            raise BadInput(f"method.anchor_instruction_as: {self.anchor_instruction_as!r} is not prefix or system")
        if self.anchor_max_rounds < 1:
            raise BadInput(f"method.anchor_max_rounds must be >= 1, got {self.anchor_max_rounds}")
        if self.anchor_instruction != self.anchor_instruction.strip() and self.anchor_instruction.strip() == "":
            raise BadInput("method.anchor_instruction is blank; use \"\" for no instruction")
        if prompt_format is not None and self.anchor_instruction and self.anchor_instruction_as == "system" \
                and prompt_format != "chat":
            raise BadInput(f"method.anchor_instruction_as=system needs model.prompt_format=chat "
                           f"(got {prompt_format}); use prefix")

    def record(self) -> dict:
        """What the entry and the cache key say about the procedure (only what is set)."""
        return {f.name: getattr(self, f.name) for f in fields(AnchorSettings)} if self.steered else {}


ANCHOR_FIELD_DEFAULTS = {f.name: f.default for f in fields(AnchorSettings)}


def anchor_settings_of(config) -> AnchorSettings:
    """A method config's anchor options (the unsteered defaults for configs without them)."""
    return config if isinstance(config, AnchorSettings) else AnchorSettings()


def sampling_prompt_text(prompt: str, settings: AnchorSettings, prompt_format: str, tokenizer=None) -> str:
    """The model input anchors are sampled from: the prompt, steered by the instruction if any."""
    from harness.prompting import format_prompt

    if not settings.anchor_instruction:
        return format_prompt(prompt, prompt_format, tokenizer)
    if settings.anchor_instruction_as == "prefix":
        return format_prompt(f"{settings.anchor_instruction} {prompt}", prompt_format, tokenizer)
    return tokenizer.apply_chat_template(
        [{"role": "system", "content": settings.anchor_instruction}, {"role": "user", "content": prompt}],
        tokenize=False, add_generation_prompt=True,
    )


def fill_to_k(kept: list, k: int) -> list:
    """K anchors from the kept ones, cycled in order when fewer than K passed ([] stays [])."""
    if not kept:
        return []
    return [kept[i % len(kept)] for i in range(k)]
