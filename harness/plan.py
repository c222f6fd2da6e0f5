"""The run plan: everything a run is, resolved once from its configuration, before any stage.

`resolve_plan(cfg)` looks the method and the suite up once (the suite checks the configuration
once, here), asks the method for every count it derives (K, sequences per example, the online
refresh interval), takes the metric table from the suite's instruments and fixes the run id and
the stage list. Preflight, `--dry-run`, the pipeline and its stages, `sweep` and `tune` all read
the plan; nothing else calls `get_suite` or works a count out again.

`--dry-run` (`describe_plan`) prints the plan: what will run, the assets with their content
hashes (found without building or downloading: an absent one is named as such), which stages are
already complete in the run directory, the keys of the shared caches the run will use and whether
each is already cached (harness/stages/caches.py, through the stages' own key functions), and
memory estimates. The GPU memory figures are
estimates from parameter counts, not measurements: mixed-precision Adam keeps bf16 weights and
gradients (2+2 bytes/param) and fp32 master weights plus two moments (12 bytes/param); ZeRO
shards optimizer states (stage ≥ 1), gradients (≥ 2) and weights (3) across GPUs. Activations
assume gradient checkpointing (one hidden state per layer per token) and float32 log-probs over
the vocabulary for every sequence of a micro-batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from harness.config import RunConfig
from harness.errors import BadInput
from harness.provenance import provenance_table
from harness.registry import Method, get_method
from harness.suites import Assets, PlannedAsset, Suite, get_suite, planned_data, resolve_assets, user_training_source

if TYPE_CHECKING:
    from harness.rundir import RunLayout

STAGES = ["data", "self_samples", "reference_logps", "train", "generate", "score", "leaderboard"]


def run_id_for(cfg: RunConfig) -> str:
    return f"{cfg.method_name}-{cfg.preset}-s{cfg.seed}-{cfg.hash()[:8]}"


@dataclass
class RunPlan:
    """One run, resolved: built by `resolve_plan`, read by everything after it."""

    cfg: RunConfig
    method: Method
    suite: Suite
    run_id: str
    stages: list[str]
    # K: self-samples per training prompt (Method.sample_count), and where it is set.
    k: int
    k_setting: str
    # Sequences one training example puts through the model (K for samples, one per other role).
    sequences_per_example: int
    # Optimizer steps between online refreshes of the self-samples; 0: drawn once, offline.
    refresh_every: int
    # {metric: higher is better} for every metric the suite's instruments report.
    metric_directions: dict[str, bool]
    _assets: Optional[Assets] = field(default=None, repr=False)
    _checked: bool = field(default=False, repr=False)

    def check(self) -> None:
        """The suite's one check of the configuration (its instruments' domain). Preflight makes
        it after the models and data sources are checked, so a missing file is named first;
        `resolve_plan(cfg)` makes it at once. Later calls do nothing."""
        if not self._checked:
            self.suite.check(self.cfg)
            self._checked = True

    @property
    def draws_self_samples(self) -> bool:
        return self.method.trains and self.method.draws_self_samples()

    def stage_skip(self, stage: str) -> Optional[str]:
        """Why a stage does nothing for this method (its summary says so), or None."""
        if stage == "self_samples" and not self.draws_self_samples:
            return "the method uses no self-samples"
        if stage == "reference_logps" and not (self.method.trains and self.method.reference_roles):
            return "the method uses no reference model"
        if stage == "train" and not self.method.trains:
            return "the method does not train"
        return None

    def assets(self, home: Path) -> Assets:
        """The run's models and data, resolved (built or fetched where they must be) once."""
        if self._assets is None:
            self._assets = resolve_assets(self.suite, self.cfg, home)
        return self._assets

    def planned_assets(self, home: Path) -> list[PlannedAsset]:
        """The run's models and data as they would be resolved, found without building anything."""
        found = self.suite.planned_assets(self.cfg, home)
        user_rows = user_training_source(self.cfg)
        if user_rows is not None:
            found.append(planned_data("training data (replaces the suite's)", user_rows))
        return found


def resolve_plan(cfg: RunConfig, *, check: bool = True) -> RunPlan:
    """The plan of one run (BadInput, one line, when the method or suite refuses the config).

    `check=False` leaves the suite's domain check to `RunPlan.check` (preflight's order)."""
    method = get_method(cfg.method_name)(cfg.method)
    suite = get_suite(cfg.suite)
    suite.check_settings(cfg)
    k = method.sample_count(cfg.sampling.num_samples)
    plan = RunPlan(cfg=cfg, method=method, suite=suite, run_id=run_id_for(cfg), stages=STAGES, k=k,
                   k_setting=method.sample_count_setting, sequences_per_example=method.sequences_per_example(k),
                   refresh_every=method.refresh_every(), metric_directions=suite.metric_directions(cfg))
    if check:
        plan.check()
    return plan


def shared_plan(cfg: RunConfig, resolve: Callable[[], RunPlan]) -> RunPlan:
    """The run's plan on every rank of a launch: `resolve()` (resolve_plan and preflight) runs on
    rank 0 alone, and the other ranks receive its result (harness/distributed.py says how and
    why). A rank whose own configuration (parsed from its own arguments, not resolved) hashes
    differently from the plan's stops every rank with one line: a launch that gave its ranks
    different arguments would otherwise train one model from several configurations. Without a
    launcher it is `resolve()`."""
    from harness import distributed

    try:
        plan = distributed.from_main_process(resolve)
        mine, planned = cfg.hash(), plan.cfg.hash()
        refusal = None
        if mine != planned:
            refusal = (f"rank {distributed.rank()} was started with config hash {mine[:12]}, but rank 0 resolved "
                       f"the run for config hash {planned[:12]} ({plan.run_id}): start every rank with the same "
                       "arguments")
        refusal = distributed.first_refusal(refusal)
        if refusal is not None:
            raise BadInput(refusal)
    except BaseException:
        # Nothing collective follows a failed hand-over: leave the group rather than exit in it.
        distributed.leave_process_group(completed=False)
        raise
    return plan


# Architectures of the paper preset's models (LLaMA-7B), so the plan needs no download.
KNOWN_ARCHITECTURES = {
    "PKU-Alignment/alpaca-7b-reproduced": {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32001},
    "PKU-Alignment/beaver-7b-v1.0-reward": {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32001},
    "PKU-Alignment/beaver-7b-v1.0-cost": {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32001},
}
GIB = 2**30


def _from_shape(c: dict) -> dict:
    h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    inter = c.get("intermediate_size", 4 * h)
    params = layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h
    return {"params": float(params), "hidden": h, "layers": layers, "vocab": vocab}


def _architecture(spec: str, cfg: Optional[RunConfig] = None):
    if spec in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[spec]
    config = Path(spec) / "config.json"
    if config.is_file():
        return _from_shape(json.loads(config.read_text()))
    if cfg is not None:
        # The shapes of the models the harness builds itself (tiny world, SmolLM2), or a config
        # already in the local Hugging Face cache: known before anything is built.
        from harness.preflight import policy_shape

        shape = policy_shape(cfg)
        if shape is not None:
            return _from_shape(shape)
    return None


def training_memory_gib(arch: dict, cfg: RunConfig, n_gpus: int, sequences_per_micro_batch: int) -> float:
    p = arch["params"]
    stage = 0
    spec = cfg.train.deepspeed or ""
    for s in (3, 2, 1):
        if f"zero{s}" in spec:
            stage = s
            break
    weights, grads, optim = 2 * p, 2 * p, 12 * p
    if "offload" in spec:
        optim = 0.0
    if stage >= 1:
        optim /= n_gpus
    if stage >= 2:
        grads /= n_gpus
    if stage >= 3:
        weights /= n_gpus
    tokens = sequences_per_micro_batch * cfg.train.max_length
    activations = tokens * arch["hidden"] * arch["layers"] * 2
    logits = tokens * arch["vocab"] * 4
    return (weights + grads + optim + activations + logits) / GIB


def _at(revision) -> str:
    """How a Hub id's pin reads in the plan: unpinned ids say they follow their default branch."""
    return f"@{revision}" if revision else ""


def _gib(value: float) -> str:
    return f"{value:.1f} GiB" if value >= 0.1 else f"{value * 1024:.0f} MiB"


def _negative_text(cfg: RunConfig) -> str:
    if cfg.data.format == "pku-saferlhf":
        return (f"negative = the {'less safe' if cfg.data.negative_from == 'safer' else 'worse'} response of each "
                f"pair, only unsafe negatives: {cfg.data.only_unsafe_negatives}")
    if cfg.data.format == "hh-rlhf":
        return "negative = the rejected dialogue's last reply"
    return "negative = the row's harmful response" + (
        f" (harm score ≥ {cfg.data.min_harm_score})" if cfg.data.min_harm_score is not None else "")


def stage_states(plan: RunPlan, layout: "RunLayout") -> list[str]:
    """Each stage as the next invocation will treat it: complete in the run directory (skipped),
    a no-op for this method, or to run."""
    lines = []
    for stage in plan.stages:
        marker = layout.complete_marker(stage)
        if marker.exists():
            state = "complete in the run directory: skipped"
        elif plan.stage_skip(stage):
            state = f"runs as a no-op ({plan.stage_skip(stage)})"
        else:
            state = "runs"
        lines.append(f"  {stage:<16}{state}")
    return lines


def describe_plan(plan: RunPlan, out_dir: Path, home: Path, n_gpus: int = 8) -> str:
    """What `--dry-run` prints: the run, its assets with hashes, its stages' state, its memory."""
    from harness.rundir import RunLayout
    from harness.stages.caches import cache_lines

    cfg, method = plan.cfg, plan.method
    layout = RunLayout.of(out_dir, plan.run_id)
    assets = plan.planned_assets(home)
    lines = [
        f"run id:      {plan.run_id}",
        f"method:      {cfg.method_name}  {method.hyperparameters()}",
        f"roles:       {', '.join(method.roles) or '—'}; reference log-probs for: {', '.join(method.reference_roles) or '—'}",
        *([f"self-samples: K = {plan.k} per training prompt ({plan.k_setting})"
           + (f", refreshed every {plan.refresh_every} steps" if plan.refresh_every else "")]
          if plan.draws_self_samples else []),
        f"policy:      {cfg.model.policy}{_at(cfg.model.policy_revision)} ({cfg.model.dtype}, prompt format "
        f"{cfg.model.prompt_format})",
        f"references:  π_r− (samples) = {cfg.model.reference_for_samples}, π_r+ (negatives) = {cfg.model.reference_for_negatives}",
        f"scorers:     reward {cfg.model.reward_model}{_at(cfg.model.reward_model_revision)}; cost "
        f"{cfg.model.cost_model}{_at(cfg.model.cost_model_revision)} (template {cfg.eval.scorer_template!r})",
        f"suite:       {cfg.suite}; metrics: " + ", ".join(f"{name} {'↑' if up else '↓'}"
                                                         for name, up in sorted(plan.metric_directions.items())),
        f"dataset:     {cfg.data.dataset}{_at(cfg.data.revision)}"
        f"{f', folder {cfg.data.data_dir}' if cfg.data.data_dir else ''} ({cfg.data.format}) [{cfg.data.train_split} → train, "
        f"{cfg.data.eval_split} → eval], " + _negative_text(cfg),
        *([f"training on: {cfg.data.train_dataset} ({cfg.data.format}) [{cfg.data.train_split}] in place of "
           f"the suite's own rows; evaluation, instruments and capability stay the suite's"]
          if cfg.data.train_dataset is not None else []),
        f"judge:       {cfg.eval.judge_model or 'off'}" + (f" at {cfg.eval.judge_base_url}" if cfg.eval.judge_base_url else ""),
        f"capability:  {', '.join(cfg.eval.lm_eval_tasks) or 'off'}",
        f"training:    lr {cfg.train.learning_rate}, epochs {cfg.train.epochs}, micro-batch {cfg.train.per_device_batch_size} "
        f"× accumulation {cfg.train.gradient_accumulation_steps}, max length {cfg.train.max_length}, "
        f"bf16 {cfg.train.bf16}, DeepSpeed {cfg.train.deepspeed or 'off'}",
        f"assets:      (under {home}; nothing is built or downloaded by a dry run)",
        *(f"  {asset.line()}" for asset in assets),
        "stages:      " + " → ".join(plan.stages),
        f"run directory: {layout.root}" + ("" if layout.status.exists() else " (not started)"),
        *stage_states(plan, layout),
        *cache_lines(plan, out_dir, home),
    ]
    policy = next((a for a in assets if a.role == "policy"), None)
    arch = _architecture(str(policy.path) if policy is not None and policy.present else cfg.model.policy, cfg)
    if arch:
        micro = cfg.train.per_device_batch_size * plan.sequences_per_example
        train_gib = training_memory_gib(arch, cfg, n_gpus, micro)
        gen_gib = (2 * arch["params"] + 2 * 2 * arch["layers"] * arch["hidden"] * cfg.sampling.batch_size
                   * (cfg.train.max_length + cfg.sampling.max_new_tokens)) / GIB
        params = arch["params"]
        size = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
        lines.append(
            f"GPU memory:  training ≈ {_gib(train_gib)} per GPU on {n_gpus} GPUs "
            f"({micro} sequences per micro-batch); sampling/generation ≈ {_gib(gen_gib)}; "
            f"policy {size} parameters (estimates, see harness/plan.py)"
        )
    else:
        lines.append("GPU memory:  unknown (the policy's architecture is not known without downloading it)")
    lines += provenance_table(cfg)
    lines.append("validation:  config, method hyperparameters and presets OK")
    return "\n".join(lines)
