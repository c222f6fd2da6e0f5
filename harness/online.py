"""Online self-samples for D²O: refreshed from the current policy every N optimizer steps.

Every `refresh_every` steps the policy is snapshotted; each batch's K samples are then drawn from
that snapshot (at most N−1 steps stale) and scored by the fixed π_r−, which therefore stays in
memory during training (under LoRA, π_r− that is the base is the policy with its adapters
disabled, so no second model). Offline mode (the default) needs none of this. A checkpoint carries the
refresher's state (`state_dict`), so a resumed run draws the samples an uninterrupted one would.
"""

from __future__ import annotations

import copy

import torch

from harness.generation import generate_completions
from harness.logprobs import encode_pair, score_pairs
from harness.lora import adapters_disabled


class OnlineSampleRefresher:
    def __init__(self, *, reference_model, tokenizer, prompt_texts, k, sampling, refresh_every, max_length, seed,
                 sampling_texts=None):
        # None: the policy under LoRA with its adapters disabled (no second model in memory).
        self.reference_model = reference_model.eval() if reference_model is not None else None
        self.tokenizer = tokenizer
        # Scored under `prompt_texts`; sampled from `sampling_texts` (the prompt with the anchor
        # instruction, harness/anchors.py), which default to the same texts.
        self.prompt_texts = prompt_texts
        self.sampling_texts = sampling_texts or prompt_texts
        self.k = k
        self.sampling = sampling
        self.refresh_every = refresh_every
        self.max_length = max_length
        self.seed = seed
        self.snapshot = None
        self.snapshot_step = None
        self.refreshes = 0
        self._restored = None  # a checkpoint's snapshot, loaded into a copy of the model on first use

    def state_dict(self, step: int) -> dict:
        """What a checkpoint after `step` optimizer steps needs to go on as this refresher would:
        the snapshot's weights, unless the next batch refreshes it anyway."""
        keep = self.snapshot is not None and step - self.snapshot_step < self.refresh_every
        weights = {k: v.detach().cpu().clone() for k, v in self.snapshot.state_dict().items()} if keep else None
        return {"refreshes": self.refreshes, "snapshot_step": self.snapshot_step if keep else None,
                "snapshot": weights}

    def load_state_dict(self, state: dict) -> None:
        self.refreshes = int(state["refreshes"])
        self._restored = state if state.get("snapshot") is not None else None

    def _policy_snapshot(self, model, step: int):
        if self._restored is not None:
            self.snapshot = copy.deepcopy(getattr(model, "module", model)).eval()
            self.snapshot.load_state_dict(self._restored["snapshot"])
            self.snapshot_step = int(self._restored["snapshot_step"])
            self._restored = None
        if self.snapshot is None or step - self.snapshot_step >= self.refresh_every:
            unwrapped = getattr(model, "module", model)
            # The stale snapshot goes first: the copy made beside it would hold two at once.
            self.snapshot = None
            self.snapshot = copy.deepcopy(unwrapped).eval()
            self.snapshot_step = step
            self.refreshes += 1
        return self.snapshot

    def __call__(self, model, prompt_indices: list[int], step: int):
        snapshot = self._policy_snapshot(model, step)
        texts = [self.prompt_texts[i] for i in prompt_indices]
        s = self.sampling
        groups = generate_completions(
            snapshot, self.tokenizer, [self.sampling_texts[i] for i in prompt_indices], max_new_tokens=s.max_new_tokens, do_sample=True,
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, num_return_sequences=self.k,
            batch_size=max(1, s.batch_size // self.k), seed=self.seed + step, desc="online self-samples",
            # The offline self-samples' budget (sampling.memory_budget_mb): a refresh runs beside the
            # training step's weights, gradients and optimizer state, so its calls are held to it
            # too. It cuts a call only above the budget, so draws that fit are those drawn before.
            memory_budget_bytes=s.memory_budget_bytes,
        )
        pairs = [[encode_pair(self.tokenizer, text, c.text, self.max_length, ended=c.ended) for c in group]
                 for text, group in zip(texts, groups)]
        flat = [p for group in pairs for p in group]
        if self.reference_model is None:
            with adapters_disabled(model) as base:
                logps = score_pairs(base, flat, self.tokenizer.pad_token_id, s.batch_size, "online reference")
        else:
            logps = score_pairs(self.reference_model, flat, self.tokenizer.pad_token_id, s.batch_size,
                                "online reference")
        reference = torch.tensor(logps, dtype=torch.float32).view(len(pairs), self.k)
        return pairs, reference
