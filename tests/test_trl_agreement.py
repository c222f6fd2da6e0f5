"""Our baseline losses agree with TRL 1.16's implementations on the same log-probs.

TRL is a test-only dependency: it is imported here and nowhere else. Its trainers are not built
(that needs a model, a tokenizer and datasets); instead their loss code runs with a stand-in
`self` that carries only the attributes the code reads, and a stand-in model that returns fixed
per-token log-probs. That exercises TRL's own arithmetic (the margin, the β scaling, the
normalisation, the KL reference point) on numbers we control.

What is compared, and what cannot be:

- DPO (`DPOTrainer._compute_loss`, loss_type "sigmoid"): values and gradients. TRL 1.16's
  "sigmoid" has no label smoothing, so cDPO (label_smoothing > 0) is checked against loss_type
  "aot" on single-example batches: "aot" sorts the policy and reference log-ratio differences
  across the batch, which for one example leaves h unchanged and gives exactly
  −(1−ε)·log σ(β·h) − ε·log σ(−β·h).
- IPO (`DPOTrainer._compute_loss`, loss_type "ipo"): TRL divides each log-ratio by its completion
  token count, our `length_normalize=True`. The summed variant (OpenRLHF) has no TRL counterpart.
- KTO (`KTOTrainer._compute_loss`, loss_type "kto"): TRL's batches are unpaired items, each with
  its own mismatched KL completion, and its loss is the mean over items. Ours pairs a chosen and a
  negative per example with one `kl` completion per pair and halves the pair's sum. Fed the same
  items (B desirable + B undesirable) and the same KL log-ratios (our kl role, once for each
  item), the two agree in value and gradient. TRL also averages the KL estimate across processes;
  with one process that is the identity used here.
- SimPO (`CPOTrainer.cpo_loss`, loss_type "simpo", cpo_alpha 0): per-example values and
  gradients on length-normalised log-probs. TRL's `simpo_gamma` is γ itself.
- ORPO (`ORPOTrainer.odds_ratio_loss`): the odds-ratio term only. TRL's NLL term is one
  cross-entropy over all prompt *and* response tokens of the batch, computed from logits; ours is
  the per-example per-token mean over the response, so the totals are not comparable.
  `odds_ratio_loss` casts to float32, hence the looser tolerance.
- SFT (`DPOTrainer._compute_loss`, loss_type "sft"): TRL averages over all chosen tokens of the
  batch, ours per example then over the batch. They agree when every response has the same
  length, which is what is checked (and that they differ otherwise, so the difference is known).
- NPO and GA have no TRL implementation in 1.16.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.registry import SequenceLogps, get_method

trl = pytest.importorskip("trl")
with warnings.catch_warnings():
    # CPO and ORPO live in trl.experimental, which warns on import; that instability is what
    # the version pin below guards against.
    warnings.simplefilter("ignore")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

BATCH = 6
CPU = torch.device("cpu")


def test_trl_version_is_the_one_these_stand_ins_were_written_for():
    # The stand-in `self` objects below mirror the attributes TRL 1.16's loss code reads; a new
    # TRL may read others. Fail loudly rather than compare against something else.
    assert trl.__version__.startswith("1.16"), trl.__version__


# ---------------------------------------------------------------- inputs


@pytest.fixture
def logps():
    rng = np.random.default_rng(7)
    out = {}
    for role in ("chosen", "negative", "kl"):
        n = rng.integers(2, 25, size=BATCH)
        total = n * rng.uniform(-2.5, -0.1, size=BATCH)
        out[role] = {
            "total": torch.tensor(total, dtype=torch.float64),
            "n": torch.tensor(n, dtype=torch.float64),
            "ref": torch.tensor(total + rng.normal(0, 3.0, size=BATCH), dtype=torch.float64),
        }
    return out


def leaf(values: torch.Tensor) -> torch.Tensor:
    return values.clone().requires_grad_(True)


def ours(name, logps, take=slice(None), **config):
    """Our per-example losses and the policy totals they were computed from (grad-enabled)."""
    cls = get_method(name)
    method = cls(cls.Config(**config))
    policy = {
        role: SequenceLogps(total=leaf(logps[role]["total"][take]), n_tokens=logps[role]["n"][take])
        for role in method.roles
    }
    reference = {role: logps[role]["ref"][take] for role in method.reference_roles}
    losses, _ = method.loss(policy, reference)
    return losses, policy


# ---------------------------------------------------------------- stand-ins for TRL's trainers


def completion_layout(totals: torch.Tensor, n_tokens: torch.Tensor):
    """Token-level tensors for sequences "prompt token + n completion tokens (+ padding)".

    Each completion token gets log-prob total/n, so TRL's sum over positions recovers `total`
    and gradients flow back to `totals`. Position 0 stands for the prompt.
    """
    n = n_tokens.long()
    width = 1 + int(n.max()) + 1
    positions = torch.arange(width)
    completion_mask = ((positions >= 1) & (positions <= n[:, None])).long()
    shifted = completion_mask[:, 1:].to(totals.dtype)
    per_token = shifted * (totals / n_tokens)[:, None]
    return completion_mask, per_token


class FixedLogpsModel:
    """Returns preset per-token log-probs, chosen by the first input token (a sequence-set tag)."""

    training = True

    def __init__(self, per_token_by_tag: dict[int, torch.Tensor]):
        self.per_token_by_tag = per_token_by_tag

    def __call__(self, input_ids=None, **_):
        per_token = self.per_token_by_tag[int(input_ids[0, 0])]
        zeros = torch.zeros_like(per_token.detach())
        return SimpleNamespace(
            log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
        )


def trainer_stub(**attributes) -> SimpleNamespace:
    identity = lambda x: x  # noqa: E731  (one process: gathering is the identity)
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=CPU, gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        **attributes,
    )


def trl_dpo_family_loss(loss_type, beta, chosen, negative, *, label_smoothing=0.0):
    """TRL's DPOTrainer loss (batch mean) for precomputed reference log-probs."""
    totals = torch.cat([chosen["total"], negative["total"]])
    n_tokens = torch.cat([chosen["n"], negative["n"]])
    completion_mask, per_token = completion_layout(totals, n_tokens)
    tag = 1
    input_ids = torch.full(completion_mask.shape, tag, dtype=torch.long)
    stub = trainer_stub(
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "completion_mask": completion_mask,
        "ref_chosen_logps": chosen["ref"],
        "ref_rejected_logps": negative["ref"],
    }
    return DPOTrainer._compute_loss(stub, FixedLogpsModel({tag: per_token}), inputs, False)


def role_slice(logps, role, take=slice(None), total=None):
    entry = logps[role]
    return {
        "total": entry["total"][take] if total is None else total,
        "n": entry["n"][take],
        "ref": entry["ref"][take],
    }


# ---------------------------------------------------------------- DPO


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_sigmoid_values_and_gradients(logps, beta):
    our_losses, policy = ours("dpo", logps, beta=beta)
    our_losses.mean().backward()

    chosen_total, negative_total = leaf(logps["chosen"]["total"]), leaf(logps["negative"]["total"])
    trl_loss = trl_dpo_family_loss(
        "sigmoid",
        beta,
        role_slice(logps, "chosen", total=chosen_total),
        role_slice(logps, "negative", total=negative_total),
    )
    trl_loss.backward()
    torch.testing.assert_close(our_losses.mean(), trl_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy["chosen"].total.grad, chosen_total.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(policy["negative"].total.grad, negative_total.grad, rtol=1e-10, atol=1e-14)


def test_dpo_per_example_values(logps):
    our_losses, _ = ours("dpo", logps)
    for i in range(BATCH):
        take = slice(i, i + 1)
        trl_loss = trl_dpo_family_loss(
            "sigmoid", 0.1, role_slice(logps, "chosen", take), role_slice(logps, "negative", take)
        )
        torch.testing.assert_close(our_losses[i], trl_loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_conservative_dpo_matches_trl_aot_on_single_examples(logps, smoothing):
    our_losses, _ = ours("dpo", logps, beta=0.2, label_smoothing=smoothing)
    for i in range(BATCH):
        take = slice(i, i + 1)
        trl_loss = trl_dpo_family_loss(
            "aot",
            0.2,
            role_slice(logps, "chosen", take),
            role_slice(logps, "negative", take),
            label_smoothing=smoothing,
        )
        torch.testing.assert_close(our_losses[i], trl_loss, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- IPO


@pytest.mark.parametrize("tau", [0.1, 1.5])
def test_ipo_length_normalised_matches_trl(logps, tau):
    our_losses, policy = ours("ipo", logps, tau=tau, length_normalize=True)
    our_losses.mean().backward()

    chosen_total, negative_total = leaf(logps["chosen"]["total"]), leaf(logps["negative"]["total"])
    trl_loss = trl_dpo_family_loss(
        "ipo",
        tau,
        role_slice(logps, "chosen", total=chosen_total),
        role_slice(logps, "negative", total=negative_total),
    )
    trl_loss.backward()
    torch.testing.assert_close(our_losses.mean(), trl_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy["chosen"].total.grad, chosen_total.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(policy["negative"].total.grad, negative_total.grad, rtol=1e-10, atol=1e-14)

    summed, _ = ours("ipo", logps, tau=tau, length_normalize=False)
    assert not torch.allclose(summed.mean(), trl_loss)


# ---------------------------------------------------------------- KTO


def trl_kto_loss(beta, w_d, w_u, chosen_total, negative_total, logps):
    """TRL's KTO loss on 2B unpaired items: B desirable (our chosen), B undesirable (our negative)."""
    totals = torch.cat([chosen_total, negative_total])
    n_tokens = torch.cat([logps["chosen"]["n"], logps["negative"]["n"]])
    completion_mask, per_token = completion_layout(totals, n_tokens)
    # Every item's KL completion: our pair's kl role, once for each of its two items.
    kl_totals = torch.cat([logps["kl"]["total"], logps["kl"]["total"]])
    kl_n = torch.cat([logps["kl"]["n"], logps["kl"]["n"]])
    kl_completion_mask, kl_per_token = completion_layout(kl_totals, kl_n)
    main_tag, kl_tag = 1, 2
    input_ids = torch.full(completion_mask.shape, main_tag, dtype=torch.long)
    kl_input_ids = torch.full(kl_completion_mask.shape, kl_tag, dtype=torch.long)
    stub = trainer_stub(
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=w_d,
        undesirable_weight=w_u,
    )
    stub._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(stub, model, batch)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "completion_mask": completion_mask,
        "KL_input_ids": kl_input_ids,
        "KL_attention_mask": torch.ones_like(kl_input_ids),
        "KL_completion_mask": kl_completion_mask,
        "label": torch.tensor([True] * BATCH + [False] * BATCH),
        "ref_logps": torch.cat([logps["chosen"]["ref"], logps["negative"]["ref"]]),
        "ref_KL_logps": torch.cat([logps["kl"]["ref"], logps["kl"]["ref"]]),
    }
    model = FixedLogpsModel({main_tag: per_token, kl_tag: kl_per_token})
    return KTOTrainer._compute_loss(stub, model, inputs, False)


@pytest.mark.parametrize("kl_shift", [4.0, -4.0])  # KL estimate above 0, and clamped at 0
@pytest.mark.parametrize("beta,w_d,w_u", [(0.1, 1.0, 1.0), (0.5, 1.2, 0.9)])
def test_kto_matches_trl_on_the_same_items_and_kl_completions(logps, kl_shift, beta, w_d, w_u):
    logps["kl"]["total"] = logps["kl"]["ref"] + kl_shift
    our_losses, policy = ours("kto", logps, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    our_losses.mean().backward()

    chosen_total, negative_total = leaf(logps["chosen"]["total"]), leaf(logps["negative"]["total"])
    trl_loss = trl_kto_loss(beta, w_d, w_u, chosen_total, negative_total, logps)
    trl_loss.backward()
    torch.testing.assert_close(our_losses.mean(), trl_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy["chosen"].total.grad, chosen_total.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(policy["negative"].total.grad, negative_total.grad, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- SimPO via CPO


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.375), (1.0, 0.0)])
def test_simpo_matches_trl_cpo_simpo(logps, beta, gamma):
    our_losses, policy = ours("simpo", logps, beta=beta, gamma=gamma)
    our_losses.sum().backward()

    chosen_total, negative_total = leaf(logps["chosen"]["total"]), leaf(logps["negative"]["total"])
    stub = trainer_stub(alpha=0.0, beta=beta, loss_type="simpo", simpo_gamma=gamma, label_smoothing=0.0)
    trl_losses, _, _ = CPOTrainer.cpo_loss(
        stub, chosen_total / logps["chosen"]["n"], negative_total / logps["negative"]["n"]
    )
    trl_losses.sum().backward()
    torch.testing.assert_close(our_losses, trl_losses, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy["chosen"].total.grad, chosen_total.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(policy["negative"].total.grad, negative_total.grad, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- ORPO


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_odds_ratio_term_matches_trl(logps, lam):
    our_losses, _ = ours("orpo", logps, lam=lam)
    chosen_mean = logps["chosen"]["total"] / logps["chosen"]["n"]
    negative_mean = logps["negative"]["total"] / logps["negative"]["n"]
    stub = trainer_stub(beta=lam)
    trl_weighted_term, _, _, _, _ = ORPOTrainer.odds_ratio_loss(stub, chosen_mean, negative_mean)
    # ours = NLL − λ·log σ(log-odds ratio), TRL's term = λ·log σ(log-odds ratio).
    our_odds_ratio_part = our_losses - (-chosen_mean)
    torch.testing.assert_close(
        our_odds_ratio_part, -trl_weighted_term.to(torch.float64), rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------- SFT


def test_sft_matches_trl_sft_when_lengths_are_equal(logps):
    for role in ("chosen", "negative"):
        logps[role]["n"] = torch.full((BATCH,), 9.0, dtype=torch.float64)
    our_losses, _ = ours("sft", logps)
    trl_loss = trl_dpo_family_loss(
        "sft", 0.1, role_slice(logps, "chosen"), role_slice(logps, "negative")
    )
    torch.testing.assert_close(our_losses.mean(), trl_loss, rtol=1e-12, atol=1e-12)


def test_sft_differs_from_trl_token_mean_when_lengths_differ(logps):
    our_losses, _ = ours("sft", logps)
    trl_loss = trl_dpo_family_loss(
        "sft", 0.1, role_slice(logps, "chosen"), role_slice(logps, "negative")
    )
    token_mean = -(logps["chosen"]["total"].sum() / logps["chosen"]["n"].sum())
    torch.testing.assert_close(trl_loss, token_mean, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(our_losses.mean(), trl_loss)
