"""D²O's loss (Eq. 3) against an independent float64 computation, its limits and gradients."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2o.loss import d2o_loss
from harness.logprobs import collate_pairs, EncodedPair, sequence_logps, token_logps


def reference_d2o(ps, rs, pn, rn, alpha, beta):
    """Eq. 3 written out with Python floats, one example at a time."""
    out = []
    for i in range(ps.shape[0]):
        k = ps.shape[1]
        u = beta / k * sum(ps[i, j] - rs[i, j] for j in range(k)) - alpha * (pn[i] - rn[i])
        # −log σ(u) = log(1 + e^(−u)), in the form that neither overflows nor cancels.
        out.append(math.log1p(math.exp(-u)) if u > 0 else -u + math.log1p(math.exp(u)))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 11])
@pytest.mark.parametrize("alpha,beta", [(0.1, 0.1), (0.5, 2.0), (0.0, 1.0)])
def test_matches_float64_reference(k, alpha, beta):
    rng = np.random.default_rng(k)
    b = 7
    ps, rs = rng.normal(-30, 8, (b, k)), rng.normal(-30, 8, (b, k))
    pn, rn = rng.normal(-40, 8, b), rng.normal(-40, 8, b)
    got = d2o_loss(torch.tensor(ps), torch.tensor(rs), torch.tensor(pn), torch.tensor(rn), alpha=alpha, beta=beta)
    assert got.shape == (b,)
    np.testing.assert_allclose(got.numpy(), reference_d2o(ps, rs, pn, rn, alpha, beta), rtol=1e-10)


def test_k1_equal_weights_single_reference_is_dpo():
    rng = np.random.default_rng(0)
    chosen, rejected = torch.tensor(rng.normal(-20, 5, 9)), torch.tensor(rng.normal(-25, 5, 9))
    ref_chosen, ref_rejected = torch.tensor(rng.normal(-20, 5, 9)), torch.tensor(rng.normal(-25, 5, 9))
    beta = 0.3
    d2o = d2o_loss(chosen[:, None], ref_chosen[:, None], rejected, ref_rejected, alpha=beta, beta=beta)
    dpo = -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))
    torch.testing.assert_close(d2o, dpo, rtol=0, atol=1e-12)


def test_gradient_raises_samples_and_lowers_negative():
    ps = torch.full((2, 4), -10.0, requires_grad=True)
    pn = torch.full((2,), -10.0, requires_grad=True)
    loss = d2o_loss(ps, torch.full((2, 4), -10.0), pn, torch.full((2,), -10.0), alpha=0.1, beta=0.1).sum()
    loss.backward()
    # Gradient descent moves against the gradient: samples' log-probs go up, the negative's down.
    assert (ps.grad < 0).all()
    assert (pn.grad > 0).all()
    # The sample term is averaged over K: each sample's weight is β/K of the negative-free total.
    torch.testing.assert_close(ps.grad.sum(dim=1), -pn.grad * (0.1 / 0.1))


def test_one_bad_sample_is_diluted_by_k():
    """A single extreme self-sample shifts the loss by (β/K)·Δ, not β·Δ."""
    base = dict(ref_sample_logps=torch.zeros(1, 8), policy_negative_logps=torch.zeros(1),
                ref_negative_logps=torch.zeros(1), alpha=0.1, beta=0.1)
    samples = torch.zeros(1, 8)
    bumped = samples.clone()
    bumped[0, 0] = -50.0
    from d2o.loss import d2o_margin

    delta = d2o_margin(bumped, **{k: v for k, v in base.items()}) - d2o_margin(samples, **base)
    assert delta.item() == pytest.approx(0.1 / 8 * -50.0)


@pytest.mark.parametrize("bad", [
    dict(policy_sample_logps=torch.zeros(3), ref_sample_logps=torch.zeros(3)),
    dict(policy_sample_logps=torch.zeros(3, 2), ref_sample_logps=torch.zeros(3, 3)),
    dict(policy_negative_logps=torch.zeros(4)),
])
def test_rejects_mismatched_shapes(bad):
    args = dict(policy_sample_logps=torch.zeros(3, 2), ref_sample_logps=torch.zeros(3, 2),
                policy_negative_logps=torch.zeros(3), ref_negative_logps=torch.zeros(3))
    args.update(bad)
    with pytest.raises(ValueError):
        d2o_loss(**args, alpha=0.1, beta=0.1)


def test_sequence_logps_sum_response_tokens_only():
    """Prompt and padding positions contribute nothing; response tokens are summed."""
    torch.manual_seed(0)
    vocab = 11
    pairs = [EncodedPair([1, 2, 3, 4, 5], 3), EncodedPair([6, 7, 8], 1)]
    batch = collate_pairs(pairs, pad_id=0)
    logits = torch.randn(2, 5, vocab, dtype=torch.float64)

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": logits})()

    got = sequence_logps(Fixed(), **batch)
    logp = torch.log_softmax(logits, dim=-1)
    # Row 0: response tokens 4 and 5 at positions 3 and 4, predicted from positions 2 and 3.
    expected0 = logp[0, 2, 4] + logp[0, 3, 5]
    # Row 1: response tokens 7 and 8 at positions 1 and 2; positions 3-4 are padding.
    expected1 = logp[1, 0, 7] + logp[1, 1, 8]
    torch.testing.assert_close(got.total, torch.stack([expected0, expected1]).float(), rtol=1e-6, atol=1e-6)
    assert got.n_tokens.tolist() == [2.0, 2.0]
    # Changing a prompt or padding token's logits leaves the result unchanged.
    logits[0, 0] += 5.0
    logits[1, 3:] += 5.0
    torch.testing.assert_close(sequence_logps(Fixed(), **batch).total, got.total)


def test_token_logps_matches_log_softmax():
    logits = torch.randn(3, 6, 13)
    ids = torch.randint(0, 13, (3, 6))
    expected = torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(token_logps(logits, ids), expected)
