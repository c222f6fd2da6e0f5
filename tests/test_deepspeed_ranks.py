"""DeepSpeed ZeRO-2 on two CPU ranks trains like one rank with the same global batch.

Three trainings of the same seeded tiny LlamaForCausalLM (hidden 32, 2 layers, random init) with
the registered `d2o` method (K = 2 self-samples, reference log-probs = the initial policy) on 64
synthetic token rows, each through `harness.training.train_method` with TrainConfig.deepspeed =
"zero2", the Trainer's torch AdamW (no compiled optimizer op), lr 1e-2 constant, 10 optimizer
steps, global batch 4 (tests/deepspeed_worker.py):

    two_ranks  `deepspeed --num_nodes 1 --num_accelerators 2` (DS_ACCELERATOR=cpu, gloo),
               per-device batch 2
    one_rank   plain `python` (one-process DeepSpeed group), per-device batch 4
    grad_accum plain `python`, per-device batch 2 × gradient accumulation 2

Checked: every rank runs a ZeRO-2 DeepSpeedEngine over gloo; the data order is the same (at each
step the two ranks' batches together are exactly the one-rank run's batch, and the two
micro-batches of the accumulation run); both ranks log the same loss; and the loss and
gradient-norm trajectories agree within

    two_ranks vs grad_accum:  |Δloss| ≤ 1e-6,  |Δgrad_norm| ≤ 1e-5
    two_ranks vs one_rank:    |Δloss| ≤ 2e-4,  |Δgrad_norm| ≤ 2e-3 · grad_norm

Why not exact: float32 sums depend on their order. Against gradient accumulation the micro-batches
are the same tensors, halving a loss is exact, and gloo adds the same two gradients; only ZeRO-2's
gradient norm (squared norms of two partitions, then summed) is reduced in another order
(measured: losses bit-identical, max |Δgrad_norm| 6.0e-8). Against one rank with a batch of 4,
the forward pass pads 4 sequences to one width instead of 2 + 2 to two widths, and the mean over 4
examples is summed in another order than the average of two means of 2, so gradients differ in
the last bits; Adam divides each entry by its own running RMS, which turns last-bit noise in
near-zero entries into O(lr) update differences that grow with the steps (measured over 10 steps:
max |Δloss| 1.2e-7, max relative |Δgrad_norm| 5.9e-7). Every run uses one OpenMP thread: with 2
threads per process, multithreaded kernels split a batch of 4 and a batch of 2 differently, so
their own reduction order differs too, and the gap grew to |Δloss| 4.8e-5, |Δgrad_norm| 6.2e-4
relative. The one-rank tolerances leave room for that (4×) and stay ≥ 30× below what broken
ranks do, each tried once by editing harness/training.py: rank 1's gradient dropped: max |Δloss|
4.8e-2; gradients summed instead of averaged: 6.2e-3 (grad norms over 2×); ranks shuffling with
different seeds: the batch check fails and |Δloss| reaches 1.3e-1 (step 1 always logs log 2, the
policy being its own reference).

The first DeepSpeed init on a CPU compiles its shared-memory comm op (about a minute, cached in
~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR): the test takes ~100 s cold, ~30 s warm on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.distributed import free_loopback_port


def deepspeed_test(fn):
    """The launched trainings: markers deepspeed and slow (the CLI test below is neither)."""
    return pytest.mark.deepspeed(pytest.mark.slow(pytest.mark.timeout(900)(fn)))

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "deepspeed_worker.py"
STEPS = 10
COMMON = ["--method", "d2o", "--k", "2", "--steps", str(STEPS), "--examples", "64", "--lr", "1e-2",
          "--deepspeed", "zero2", "--seed", "0"]

# The tolerances stated in the module docstring.
GA_LOSS_ATOL, GA_GRAD_NORM_ATOL = 1e-6, 1e-5
ONE_RANK_LOSS_ATOL, ONE_RANK_GRAD_NORM_RTOL = 2e-4, 2e-3


def _env() -> dict:
    env = dict(os.environ)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    # One OpenMP thread per process in every run, so that no kernel splits a batch of 4 otherwise
    # than a batch of 2 (see the module docstring), and two ranks don't oversubscribe a CI runner.
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    return env


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("deepspeed-ranks")
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    if launcher is None:
        pytest.skip("DeepSpeed's launcher `deepspeed` is not on PATH")
    _run([launcher, "--num_nodes", "1", "--num_accelerators", "2", "--master_port", str(free_loopback_port()),
          str(WORKER), "--out", str(out / "two_ranks.json"), "--per-device-batch", "2", *COMMON],
         out / "two_ranks.log")
    _run([sys.executable, str(WORKER), "--out", str(out / "one_rank.json"), "--per-device-batch", "4", *COMMON],
         out / "one_rank.log")
    _run([sys.executable, str(WORKER), "--out", str(out / "grad_accum.json"), "--per-device-batch", "2",
          "--grad-accum", "2", *COMMON], out / "grad_accum.log")
    return {
        "ranks": [json.loads((out / f"two_ranks.rank{r}.json").read_text()) for r in (0, 1)],
        "one_rank": json.loads((out / "one_rank.json").read_text()),
        "grad_accum": json.loads((out / "grad_accum.json").read_text()),
    }


def _values(curve: list) -> list[float]:
    assert [step for step, _ in curve] == list(range(1, STEPS + 1)), curve
    return [value for _, value in curve]


@deepspeed_test
def test_every_run_is_zero2_on_cpu(runs):
    for record in [*runs["ranks"], runs["one_rank"], runs["grad_accum"]]:
        assert record["deepspeed_engine"] == "DeepSpeedEngine" and record["zero_stage"] == 2, record
        assert record["device"].startswith("cpu") and record["backend"] == "gloo", record
    assert [r["rank"] for r in runs["ranks"]] == [0, 1]
    assert [r["world_size"] for r in runs["ranks"]] == [2, 2]
    assert runs["one_rank"]["world_size"] == runs["grad_accum"]["world_size"] == 1


@deepspeed_test
def test_global_batches_hold_the_same_examples(runs):
    rank0, rank1 = (r["batches"][:STEPS] for r in runs["ranks"])
    one = runs["one_rank"]["batches"][:STEPS]
    accum = runs["grad_accum"]["batches"][: 2 * STEPS]
    for step in range(STEPS):
        global_batch = rank0[step] + rank1[step]
        assert len(global_batch) == 4 and len(set(global_batch)) == 4, (step, rank0[step], rank1[step])
        assert global_batch == one[step], f"step {step + 1}: ranks saw {rank0[step]}+{rank1[step]}, one rank {one[step]}"
        assert [rank0[step], rank1[step]] == accum[2 * step : 2 * step + 2], step
    # Every step draws new examples (one epoch has 16 steps of 4): not one batch repeated.
    assert len({i for batch in one for i in batch}) == 4 * STEPS


@deepspeed_test
def test_both_ranks_log_the_global_loss(runs):
    rank0, rank1 = runs["ranks"]
    assert rank0["loss_curve"] == rank1["loss_curve"]
    assert rank0["grad_norm_curve"] == rank1["grad_norm_curve"]


@deepspeed_test
def test_two_ranks_match_gradient_accumulation(runs):
    two_loss, ga_loss = _values(runs["ranks"][0]["loss_curve"]), _values(runs["grad_accum"]["loss_curve"])
    two_norm, ga_norm = _values(runs["ranks"][0]["grad_norm_curve"]), _values(runs["grad_accum"]["grad_norm_curve"])
    loss_dev = max(abs(a - b) for a, b in zip(two_loss, ga_loss))
    norm_dev = max(abs(a - b) for a, b in zip(two_norm, ga_norm))
    print(f"two ranks vs gradient accumulation: max |Δloss| {loss_dev:.2e}, max |Δgrad_norm| {norm_dev:.2e}")
    assert loss_dev <= GA_LOSS_ATOL, (two_loss, ga_loss)
    assert norm_dev <= GA_GRAD_NORM_ATOL, (two_norm, ga_norm)


@deepspeed_test
def test_two_ranks_match_one_rank_with_the_same_global_batch(runs):
    two_loss, one_loss = _values(runs["ranks"][0]["loss_curve"]), _values(runs["one_rank"]["loss_curve"])
    two_norm, one_norm = _values(runs["ranks"][0]["grad_norm_curve"]), _values(runs["one_rank"]["grad_norm_curve"])
    loss_dev = max(abs(a - b) for a, b in zip(two_loss, one_loss))
    norm_dev = max(abs(a - b) / b for a, b in zip(two_norm, one_norm))
    print(f"two ranks vs one rank: max |Δloss| {loss_dev:.2e}, max |Δgrad_norm|/grad_norm {norm_dev:.2e}")
    assert loss_dev <= ONE_RANK_LOSS_ATOL, (two_loss, one_loss)
    assert norm_dev <= ONE_RANK_GRAD_NORM_RTOL, (two_norm, one_norm)
    # The comparison means something only if the trajectory moves well beyond the tolerance.
    assert max(one_loss) - min(one_loss) > 20 * ONE_RANK_LOSS_ATOL, one_loss
    assert one_loss[0] == pytest.approx(0.6931472, abs=1e-6)  # −log σ(0): policy = reference at step 1


def test_cli_accepts_the_launchers_local_rank(monkeypatch, capsys):
    # DeepSpeed's launcher runs `d2o-bench --local_rank=N <user args>`: the flag is dropped and
    # LOCAL_RANK (what transformers reads) is set from it only where the launcher has not.
    # setenv first so that monkeypatch records LOCAL_RANK and removes what the CLI sets: a leaked
    # LOCAL_RANK makes every later in-process Trainer expect a launcher's process group.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("LOCAL_RANK")
    assert cli_main(["--local_rank=1", "run", "--preset", "tiny", "--dry-run"]) == 0
    assert os.environ["LOCAL_RANK"] == "1"
    assert cli_main(["--local-rank", "0", "--method", "dpo", "--dry-run"]) == 0
    assert os.environ["LOCAL_RANK"] == "1"
    assert "method:      dpo" in capsys.readouterr().out
    assert cli_main(["--local_rank=x", "--dry-run"]) == 2
    assert capsys.readouterr().err == "d2o-bench: error: --local_rank needs a non-negative integer, got 'x'\n"


@deepspeed_test
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_a_zero_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path, zero):
    """ZeRO-2 and ZeRO-3 (one process): checkpoint every 2 steps through DeepSpeed's own
    checkpointing, SIGKILL after step 5, resume from checkpoint-4; the resumed run ends as the
    uninterrupted one.
    Tolerance: exact. Measured identical on CPU (losses, gradient norms and every parameter): the
    resumed run replays the same batches in the same order with the same optimizer state, so
    nothing is summed in another order; a GPU's nondeterministic kernels would need a tolerance."""
    pytest.importorskip("deepspeed")
    from harness.faults import ENV

    resumable = [*COMMON, "--per-device-batch", "4", "--steps", "8", "--save-steps", "2", "--deepspeed", zero]
    _run([sys.executable, str(WORKER), "--out", str(tmp_path / "straight.json"), *resumable,
          "--checkpoint-dir", str(tmp_path / "straight-ckpt")], tmp_path / "straight.log")
    killed_dir = tmp_path / "killed-ckpt"
    argv = [sys.executable, str(WORKER), "--out", str(tmp_path / "resumed.json"), *resumable,
            "--checkpoint-dir", str(killed_dir)]
    with open(tmp_path / "killed.log", "w") as handle:
        killed = subprocess.run(argv, cwd=ROOT, env={**_env(), ENV: "train:step:5"}, stdout=handle,
                                stderr=subprocess.STDOUT, timeout=600)
    assert killed.returncode == -9, (tmp_path / "killed.log").read_text()[-2000:]
    assert sorted(p.name for p in killed_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    _run(argv, tmp_path / "resumed.log")
    straight = json.loads((tmp_path / "straight.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["zero_stage"] == int(zero[-1]) and resumed["resumed_from_step"] == 4 and resumed["first_step_trained"] == 5
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert resumed["grad_norm_curve"] == straight["grad_norm_curve"]
    assert all(values for values in straight["final_parameters"].values())  # gathered, not placeholders
    assert resumed["final_parameters"] == straight["final_parameters"]


@deepspeed_test
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_gradient_caching_under_zero_trains_as_one_forward(tmp_path, zero):
    """D²O at K = 2 with 4 prompts a micro-batch (12 sequences of 7-17 tokens) in chunks of at
    most 40 padded tokens under
    ZeRO-2 and ZeRO-3 (one process): the chunks call the model inside the engine and ZeRO's
    parameter hooks gather (stage 3) and reduce for each recomputed chunk.
    Tolerance: 1e-5 on losses, 1e-4 relative on gradient norms over 4 steps at lr 1e-2, from the
    1e-6 gradient agreement of tests/test_scale_out.py compounded by Adam's first steps."""
    pytest.importorskip("deepspeed")
    common = [*COMMON, "--per-device-batch", "4", "--steps", "4", "--deepspeed", zero]
    _run([sys.executable, str(WORKER), "--out", str(tmp_path / "plain.json"), *common], tmp_path / "plain.log")
    _run([sys.executable, str(WORKER), "--out", str(tmp_path / "cached.json"), *common, "--gradient-cache-tokens", "40"],
         tmp_path / "cached.log")
    plain = json.loads((tmp_path / "plain.json").read_text())
    cached = json.loads((tmp_path / "cached.json").read_text())
    assert cached["zero_stage"] == int(zero[-1])
    assert [s for s, _ in cached["loss_curve"]] == [1, 2, 3, 4]
    for (_, got), (_, want) in zip(cached["loss_curve"], plain["loss_curve"]):
        assert got == pytest.approx(want, abs=1e-5)
    for (_, got), (_, want) in zip(cached["grad_norm_curve"], plain["grad_norm_curve"]):
        assert got == pytest.approx(want, rel=1e-4)
