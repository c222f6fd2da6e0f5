"""Online self-samples for D²O: refreshed from the current policy every N optimizer steps.

Every `refresh_every` steps the policy is snapshotted; each batch's K samples are then drawn from
that snapshot (at most N−1 steps stale) and scored by the fixed π_r−, which therefore lives as
long as training (under LoRA, π_r− that is the base is the policy with its adapters disabled, so
no second model). On the CPU both frozen models are parked in files between draws
(`ParkedModel`), so the training step does not run beside two more models' weights. Offline mode
(the default) needs none of this. A checkpoint carries the refresher's state (`state_dict`), so a
resumed run draws the samples an uninterrupted one would.
"""

from __future__ import annotations

import copy
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from harness.allocator import release_freed_memory
from harness.generation import generate_completions
from harness.logprobs import encode_pair, score_pairs
from harness.lora import adapters_disabled


class ResidentModel:
    """A frozen model kept in memory (a GPU's, or where no folder to park it in was given)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @contextmanager
    def loaded(self) -> Iterator[torch.nn.Module]:
        yield self.model


class ParkedModel:
    """A frozen copy of a CPU model whose parameters live in a file between uses: mapped back
    (`torch.load(mmap=True)`, no copy) for each use and dropped after, so the training step that
    runs in between does not hold them (0.54 GB for SmolLM2-135M in fp32). The values are the
    model's own, bit for bit; a use costs the page-ins of a file the page cache usually holds."""

    def __init__(self, model: torch.nn.Module, path: Path):
        self.path = path
        # The structure and buffers (a few KB) copied, each parameter replaced by an empty one
        # (deepcopy takes what its memo names): no second copy of the weights, even for a moment.
        # Tied parameters are one object, so they stay one.
        empty = {id(p): torch.nn.Parameter(torch.empty(0, dtype=p.dtype), requires_grad=False)
                 for p in model.parameters()}
        self.model = copy.deepcopy(model, memo=empty).eval()
        self.store(model)

    @staticmethod
    def parkable(model: torch.nn.Module) -> bool:
        """Plain floating-point parameters on the CPU: a GPU's weights would be copied back for
        every draw, and quantized ones carry state beside their data."""
        return all(p.device.type == "cpu" and p.dtype.is_floating_point and type(p) is torch.nn.Parameter
                   for p in model.parameters())

    def store(self, model: torch.nn.Module) -> None:
        """Write `model`'s parameters (the same structure) as this copy's. Tied parameters are one
        entry, as `named_parameters` lists them."""
        temporary = self.path.with_name(self.path.name + ".partial")
        torch.save({name: p.detach() for name, p in model.named_parameters()}, temporary)
        os.replace(temporary, self.path)

    def _park(self) -> None:
        for parameter in self.model.parameters():
            parameter.data = torch.empty(0, dtype=parameter.dtype)

    @contextmanager
    def loaded(self) -> Iterator[torch.nn.Module]:
        state = torch.load(self.path, mmap=True, weights_only=True)
        for name, parameter in self.model.named_parameters():
            parameter.data = state[name]
        try:
            yield self.model
        finally:
            self._park()
            del state
            # What the use freed (a draw's caches) went to malloc's heap, which glibc keeps
            # resident: returned now, it is not a floor under the next use or training step.
            release_freed_memory(collect=False)


class OnlineSampleRefresher:
    def __init__(self, *, reference_model, tokenizer, prompt_texts, k, sampling, refresh_every, max_length, seed,
                 sampling_texts=None, park_dir: Optional[Path] = None):
        # Where the frozen models are parked between draws (`ParkedModel`); None: kept in memory.
        self.park_dir = park_dir
        # None: the policy under LoRA with its adapters disabled (no second model in memory).
        self.reference = (self._frozen(reference_model, "reference", owned=True)
                          if reference_model is not None else None)
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

    def close(self) -> None:
        """Remove the parking folder and what is parked there (the refresher draws no more)."""
        if self.park_dir is not None:
            shutil.rmtree(self.park_dir, ignore_errors=True)

    def _frozen(self, model: torch.nn.Module, name: str, *, owned: bool):
        """`model` frozen for draws or scoring: parked where it can be, else in memory (a copy
        unless `owned`: the policy itself goes on training)."""
        if self.park_dir is None or not ParkedModel.parkable(model):
            return ResidentModel(model if owned else copy.deepcopy(model))
        # One file per rank: under a launcher every rank keeps its own refresher.
        return ParkedModel(model, self.park_dir / f"{name}-rank{os.environ.get('RANK', '0')}.pt")

    def state_dict(self, step: int) -> dict:
        """What a checkpoint after `step` optimizer steps needs to go on as this refresher would:
        the snapshot's weights, unless the next batch refreshes it anyway."""
        keep = self.snapshot is not None and step - self.snapshot_step < self.refresh_every
        weights = None
        if keep:
            with self.snapshot.loaded() as snapshot:
                weights = {k: v.detach().cpu().clone() for k, v in snapshot.state_dict().items()}
        return {"refreshes": self.refreshes, "snapshot_step": self.snapshot_step if keep else None,
                "snapshot": weights}

    def load_state_dict(self, state: dict) -> None:
        self.refreshes = int(state["refreshes"])
        self._restored = state if state.get("snapshot") is not None else None

    def _policy_snapshot(self, model, step: int):
        unwrapped = getattr(model, "module", model)
        if self._restored is not None:
            restored = copy.deepcopy(unwrapped)
            restored.load_state_dict(self._restored["snapshot"])
            self.snapshot = self._frozen(restored, "snapshot", owned=True)
            self.snapshot_step = int(self._restored["snapshot_step"])
            self._restored = None
        if self.snapshot is None or step - self.snapshot_step >= self.refresh_every:
            if isinstance(self.snapshot, ParkedModel):
                self.snapshot.store(unwrapped)  # the same structure: its file rewritten
            else:
                # The stale snapshot goes first: the copy made beside it would hold two at once.
                self.snapshot = None
                self.snapshot = self._frozen(unwrapped, "snapshot", owned=False)
            self.snapshot_step = step
            self.refreshes += 1
        return self.snapshot

    def __call__(self, model, prompt_indices: list[int], step: int):
        texts = [self.prompt_texts[i] for i in prompt_indices]
        s = self.sampling
        with self._policy_snapshot(model, step).loaded() as snapshot:
            groups = self._draw(snapshot, prompt_indices, step)
        pairs = [[encode_pair(self.tokenizer, text, c.text, self.max_length, ended=c.ended) for c in group]
                 for text, group in zip(texts, groups)]
        flat = [p for group in pairs for p in group]
        if self.reference is None:
            with adapters_disabled(model) as base:
                logps = score_pairs(base, flat, self.tokenizer.pad_token_id, s.batch_size, "online reference")
        else:
            with self.reference.loaded() as reference_model:
                logps = score_pairs(reference_model, flat, self.tokenizer.pad_token_id, s.batch_size,
                                    "online reference")
        reference = torch.tensor(logps, dtype=torch.float32).view(len(pairs), self.k)
        return pairs, reference

    def _draw(self, snapshot, prompt_indices: list[int], step: int):
        s = self.sampling
        return generate_completions(
            snapshot, self.tokenizer, [self.sampling_texts[i] for i in prompt_indices], max_new_tokens=s.max_new_tokens, do_sample=True,
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, num_return_sequences=self.k,
            batch_size=max(1, s.batch_size // self.k), seed=self.seed + step, desc="online self-samples",
            # The offline self-samples' budget (sampling.memory_budget_mb): a refresh runs beside the
            # training step's weights, gradients and optimizer state, so its calls are held to it
            # too. It cuts a call only above the budget, so draws that fit are those drawn before.
            memory_budget_bytes=s.memory_budget_bytes,
        )
