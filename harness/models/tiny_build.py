"""Builds the tiny world's models once, deterministically from a seed, into a cache directory.

What gets built (each step resumable: it lands under a temporary name and is renamed when done):

1. `data/`: the world's train/validation/test rows (harness/data/tiny_world.py) as JSONL.
2. `tokenizer/`: a byte-level BPE tokenizer trained on the train tasks' text only.
3. `policy/`: a small Llama causal LM trained by SFT to be "helpful but unsafe" like Alpaca:
   helpful on benign requests, complying with most harmful ones (`world.base_compliance`).
4. `reward/`, `cost/`: small Llama score models (the Safe-RLHF `LlamaForScore` layout) trained on
   the oracle's labels; cost > 0 means unsafe, reward is higher for more informative answers.

Nothing here is trained on a validation or test task: every corpus comes from the train split
(tests/test_tiny_world.py checks it string by string).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments

from harness.build_cache import build_once
from harness.data import tiny_world
from harness.hashing import sha256_json
from harness.logprobs import collate_pairs, encode_pair
from harness.models.score_model import LlamaForScore, new_score_config
from harness.prompting import format_prompt, scorer_text

log = logging.getLogger(__name__)

POLICY_SHAPE = dict(
    hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
)
SCORER_SHAPE = dict(
    hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=256,
)
VOCAB_SIZE = 1024
MAX_LENGTH = 96
# Scalar targets of the reward model per oracle label: informative answers score highest, a
# compliant-but-harmful answer is informative too (Beaver's reward ignores safety), refusals
# inform less, and off-topic text least.
REWARD_TARGETS = {"helpful": 1.0, "harmful": 0.5, "refusal": -0.25, "other": -1.0}
BUILD_VERSION = "2"


def world_key(world_cfg) -> str:
    return sha256_json(
        {"world": tiny_world.WORLD_VERSION, "build": BUILD_VERSION, "cfg": asdict(world_cfg),
         "policy": POLICY_SHAPE, "scorer": SCORER_SHAPE, "vocab": VOCAB_SIZE,
         "reward": REWARD_TARGETS}
    )[:16]


def _training_args(output_dir: str, *, epochs: float, lr: float, batch_size: int, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )


class _LossFnTrainer(Trainer):
    """A Trainer whose loss is a plain function of (model, batch)."""

    def __init__(self, *args, loss_fn, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_fn = loss_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self._loss_fn(model, inputs)
        return (loss, None) if return_outputs else loss


def _labelled(trainer: Trainer, label: str) -> Trainer:
    # A fresh clone's first run spends most of its time here: the bar says which model it trains.
    from harness.progress import label_trainer

    label_trainer(trainer, label)
    return trainer


def _train_alone(model, data: Dataset, collate, loss_fn, label: str, *, epochs: float, lr: float, seed: int) -> None:
    """Train one of the world's models with the Trainer, as a one-process job even inside a launched
    rank: under a launcher rank 0 builds the world while the others wait, and a Trainer that took
    the launch for its own would wait for them for ever (harness.distributed.single_process_job)."""
    from harness.distributed import single_process_job

    with single_process_job(), tempfile.TemporaryDirectory() as scratch:
        args = _training_args(scratch, epochs=epochs, lr=lr, batch_size=32, seed=seed)
        _labelled(_LossFnTrainer(model=model, args=args, train_dataset=data, data_collator=collate, loss_fn=loss_fn),
                  label).train()


def _build_data(out: Path, world_cfg) -> None:
    world = tiny_world.build_world(seed=world_cfg.seed, split_seed=world_cfg.split_seed,
                                   eval_templates_per_task=world_cfg.eval_templates_per_task,
                                   variant=world_cfg.variant)
    for split, rows in world.items():
        with open(out / f"{split}.jsonl", "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


def _build_tokenizer(out: Path, world_cfg) -> None:
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|pad|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = tiny_world.corpus_text(world_cfg.seed, split_seed=world_cfg.split_seed,
                                  practice_per_group=world_cfg.practice_objects_per_group)
    text += [format_prompt("", "plain"), scorer_text("", "")]
    bpe.train_from_iterator(text, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|eos|>", pad_token="<|pad|>", model_max_length=256
    )
    tokenizer.save_pretrained(out)


def _policy_examples(tokenizer, world_cfg) -> Dataset:
    corpus = tiny_world.base_sft_corpus(world_cfg.seed, world_cfg.base_compliance,
                                        split_seed=world_cfg.split_seed, variant=world_cfg.variant,
                                        practice_per_group=world_cfg.practice_objects_per_group)
    rows = []
    for item in corpus:
        pair = encode_pair(tokenizer, format_prompt(item["prompt"], "plain"), item["response"], MAX_LENGTH)
        rows.append({"input_ids": pair.input_ids, "response_start": pair.response_start})
    return Dataset.from_list(rows)


def _build_policy(out: Path, tokenizer_dir: Path, world_cfg) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    torch.manual_seed(world_cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, **POLICY_SHAPE,
    )
    model = LlamaForCausalLM(config)
    data = _policy_examples(tokenizer, world_cfg)

    def collate(rows):
        from harness.logprobs import EncodedPair

        return collate_pairs([EncodedPair(r["input_ids"], r["response_start"]) for r in rows], tokenizer.pad_token_id)

    def sft_loss(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["input_ids"][:, 1:].masked_fill(~batch["response_mask"][:, 1:], -100)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1))

    _train_alone(model, data, collate, sft_loss, "tiny world: training the policy (SFT)",
                 epochs=world_cfg.policy_epochs, lr=3e-3, seed=world_cfg.seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_scorer(out: Path, tokenizer_dir: Path, world_cfg, kind: str) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    torch.manual_seed(world_cfg.seed + (1 if kind == "reward" else 2))
    config = new_score_config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, **SCORER_SHAPE,
    )
    config.score_type = kind
    model = LlamaForScore(config)
    rows = []
    for item in tiny_world.scorer_corpus(world_cfg.seed, split_seed=world_cfg.split_seed,
                                         variant=world_cfg.variant,
                                         practice_per_group=world_cfg.practice_objects_per_group):
        ids = tokenizer(scorer_text(item["prompt"], item["response"]))["input_ids"][-MAX_LENGTH:]
        target = float(item["label"] == "harmful") if kind == "cost" else REWARD_TARGETS[item["label"]]
        rows.append({"input_ids": ids, "target": target})
    data = Dataset.from_list(rows)

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "target": torch.tensor([r["target"] for r in batch])}

    def score_loss(model, batch):
        score = model(batch["input_ids"], batch["attention_mask"])
        if kind == "cost":
            # The cost is the logit of "unsafe": its sign is the safety verdict, as in Beaver-cost.
            return F.binary_cross_entropy_with_logits(score, batch["target"])
        return F.mse_loss(score, batch["target"])

    _train_alone(model, data, collate, score_loss, f"tiny world: training the {kind} model",
                 epochs=world_cfg.scorer_epochs, lr=2e-3, seed=world_cfg.seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# The built parts of a world, each a directory under its root.
TINY_WORLD_PARTS = ("data", "tokenizer", "policy", "reward", "cost")


def tiny_world_parts(home: Path, world_cfg) -> dict[str, Path]:
    """Where each part of the world of these settings is (or will be) built; nothing is built here."""
    root = Path(home) / "tiny-world" / world_key(world_cfg)
    return {part: root / part for part in TINY_WORLD_PARTS}


def ensure_tiny_world(home: Path, world_cfg) -> dict[str, Path]:
    """Build (or reuse) the tiny world under `home`; returns the paths of its parts."""
    root = Path(home) / "tiny-world" / world_key(world_cfg)
    parts = {
        "data": build_once(root / "data", lambda d: _build_data(d, world_cfg)),
        "tokenizer": build_once(root / "tokenizer", lambda d: _build_tokenizer(d, world_cfg)),
    }
    parts["policy"] = build_once(root / "policy", lambda d: _build_policy(d, parts["tokenizer"], world_cfg))
    for kind in ("reward", "cost"):
        parts[kind] = build_once(root / kind, lambda d, k=kind: _build_scorer(d, parts["tokenizer"], world_cfg, k))
    return parts
