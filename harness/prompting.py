"""How a dataset prompt becomes model input text, per `model.prompt_format`.

- plain:  the tiny world's own template, `User: {prompt}\\nAssistant:`.
- alpaca: the Safe-RLHF / Alpaca-7B-reproduced template,
          `BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:`.
- chat:   the tokenizer's chat template with one user turn and the generation prompt.
"""

from __future__ import annotations

from harness.errors import BadInput

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:"


def format_prompt(prompt: str, style: str, tokenizer=None) -> str:
    if style == "plain":
        return f"User: {prompt}\nAssistant:"
    if style == "alpaca":
        return SAFE_RLHF_TEMPLATE.format(input=prompt)
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise BadInput("model.prompt_format=chat needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    raise BadInput(f"unknown prompt format {style!r}")


def scorer_text(prompt: str, response: str, template: str = SAFE_RLHF_TEMPLATE) -> str:
    """The text a Safe-RLHF score model reads: its conversation template plus the response."""
    if "{input}" not in template:
        raise BadInput("eval.scorer_template must contain {input}")
    return template.format(input=prompt) + " " + response.strip()
