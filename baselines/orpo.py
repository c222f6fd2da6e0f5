"""ORPO: Odds Ratio Preference Optimization (Hong, Lee, Thorne 2024, arXiv:2403.07691)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.errors import BadInput
from harness.registry import FloatDim, Method, SequenceLogps

# A per-token mean log-prob of exactly 0 (every token certain) has infinite odds; capping it just
# below 0 keeps the loss finite. Real log-probs of a softmax never get this close.
_MAX_MEAN_LOGP = -1e-6


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 − p)) for p = exp(mean_logp), computed without forming p near 1."""
    mean_logp = mean_logp.clamp(max=_MAX_MEAN_LOGP)
    # log(1 − e^m): log1p(−e^m) loses precision when e^m is near 1, log(−expm1(m)) when it is
    # near 0, so switch at m = −log 2 where both are accurate.
    log_one_minus_p = torch.where(
        mean_logp < -math.log(2),
        torch.log1p(-torch.exp(mean_logp)),
        torch.log(-torch.expm1(mean_logp)),
    )
    return mean_logp - log_one_minus_p


@dataclass
class ORPOConfig:
    # λ = 0.1: the ORPO paper's setting for its main runs; also TRL's ORPOConfig.beta default
    # (TRL calls this λ `beta`).
    lam: float = field(default=0.1, metadata={
        "help": "λ: weight of the odds-ratio term added to the chosen response's NLL."})


class ORPO(Method):
    """ORPO: SFT on the chosen response plus an odds-ratio penalty on the negative, no reference.

    p_w  = exp(log π_θ(y_w|x) / |y_w|),  p_l = exp(log π_θ(y_l|x) / |y_l|)   (per-token means)
    odds(p) = p / (1 − p)
    loss = − log π_θ(y_w|x) / |y_w|  −  λ · log σ( log odds(p_w) − log odds(p_l) )

    The NLL term here is the per-example per-token mean over the response only (the ORPO
    paper's L_SFT). TRL's ORPOTrainer computes it as one token-mean over the whole batch and
    over prompt *and* response tokens, so only the odds-ratio term is comparable one to one.
    """

    name = "orpo"
    summary = "ORPO: chosen NLL − λ·log σ(log-odds ratio of chosen vs negative), reference-free"
    Config = ORPOConfig
    roles = ("chosen", "negative")
    reference_roles = ()
    # λ: the ORPO paper's 0.1 (it also reports 0.25-1.0) in the middle of a log decade either
    # way; near 0.01 ORPO is almost plain SFT on the chosen response.
    search_space = {"lam": FloatDim(0.01, 1.0, log=True)}

    def validate(self) -> None:
        lam = self.config.lam
        if not (math.isfinite(lam) and lam >= 0):
            raise BadInput(f"method.lam must be a finite number >= 0, got {lam}")

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        chosen_mean = policy["chosen"].mean
        negative_mean = policy["negative"].mean
        # exp/expm1 near 0 need more than bf16/fp16 precision.
        work_dtype = torch.promote_types(chosen_mean.dtype, torch.float32)
        log_odds_ratio = log_odds(chosen_mean.to(work_dtype)) - log_odds(negative_mean.to(work_dtype))
        odds_ratio_term = F.logsigmoid(log_odds_ratio)
        nll = -chosen_mean.to(work_dtype)
        losses = nll - self.config.lam * odds_ratio_term
        return losses, {
            "nll": nll.detach().mean(),
            "log_odds_ratio": log_odds_ratio.detach().mean(),
            "odds_ratio_term": odds_ratio_term.detach().mean(),
        }
