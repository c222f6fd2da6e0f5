"""The D²O objective (Duan et al., Findings of EMNLP 2024, Eq. 3).

    L_D2O(θ) = − E_{(x, y_l) ~ D} [ log σ( (β/K) Σ_{i=1..K} log( π_θ(y_i|x) / π_r−(y_i|x) )
                                           − α · log( π_θ(y_l|x) / π_r+(y_l|x) ) ) ]

y_l is a human-annotated dispreferred response, y_1..y_K are self-samples from a reference policy,
π_r− scores the samples and π_r+ scores the negative. Every log π(y|x) is a *sequence* log-prob:
the sum over the response's tokens, prompt and padding excluded (see harness/logprobs.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d2o_margin(
    policy_sample_logps: torch.Tensor,
    ref_sample_logps: torch.Tensor,
    policy_negative_logps: torch.Tensor,
    ref_negative_logps: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    k: int | None = None,
) -> torch.Tensor:
    """The sigmoid's argument u of Eq. 3, shape [B].

    `k`: the run's K (the method's setting, passed down by the run plan). Given, a batch that
    carries another number of samples per prompt is refused rather than averaged over its own
    count; omitted (the loss alone, as in the unit tests), K is the tensors' last dimension."""
    if policy_sample_logps.dim() != 2 or policy_sample_logps.shape != ref_sample_logps.shape:
        raise ValueError(
            "sample log-probs must both be [B, K]; got "
            f"{tuple(policy_sample_logps.shape)} and {tuple(ref_sample_logps.shape)}"
        )
    batch, found = policy_sample_logps.shape
    if k is not None and found != k:
        raise ValueError(f"sample log-probs carry {found} samples per prompt; the run's K is {k}")
    k = found
    if k < 1:
        raise ValueError("D²O needs K >= 1 self-samples per prompt")
    expected = (batch,)
    if policy_negative_logps.shape != expected or ref_negative_logps.shape != expected:
        raise ValueError(
            f"negative log-probs must be [B]={expected}; got "
            f"{tuple(policy_negative_logps.shape)} and {tuple(ref_negative_logps.shape)}"
        )
    sample_log_ratio = (policy_sample_logps - ref_sample_logps).sum(dim=-1)
    negative_log_ratio = policy_negative_logps - ref_negative_logps
    return (beta / k) * sample_log_ratio - alpha * negative_log_ratio


def d2o_loss(
    policy_sample_logps: torch.Tensor,
    ref_sample_logps: torch.Tensor,
    policy_negative_logps: torch.Tensor,
    ref_negative_logps: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    k: int | None = None,
) -> torch.Tensor:
    """Per-example D²O losses, shape [B].

    Args:
        policy_sample_logps: [B, K] log π_θ(y_i|x) of the K self-samples.
        ref_sample_logps:    [B, K] log π_r−(y_i|x) of the same samples.
        policy_negative_logps: [B] log π_θ(y_l|x) of the negative.
        ref_negative_logps:    [B] log π_r+(y_l|x) of the negative.
        alpha: weight of the negative's log-ratio (α ≥ 0).
        beta:  weight of the averaged self-sample log-ratio (β > 0).
        k:     the run's K, checked against the tensors' (see `d2o_margin`).

    Returns:
        −log σ((β/K) Σ_i log(π_θ(y_i|x)/π_r−(y_i|x)) − α log(π_θ(y_l|x)/π_r+(y_l|x))), per example.

    The sample term is averaged over K, so one bad self-sample moves the gradient by only 1/K.
    """
    margin = d2o_margin(
        policy_sample_logps,
        ref_sample_logps,
        policy_negative_logps,
        ref_negative_logps,
        alpha=alpha,
        beta=beta,
        k=k,
    )
    return -F.logsigmoid(margin)
