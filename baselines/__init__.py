"""Baseline methods; each module registers one method (dpo.py two) on import."""

from baselines import (  # noqa: F401  (imported for their @register_method side effect)
    base,
    dpo,
    ga,
    ipo,
    kto,
    npo,
    orpo,
    self_align_sft,
    sft,
    simpo,
)
