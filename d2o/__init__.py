"""D²O: Distributional Dispreference Optimization (arXiv:2403.03419)."""

from d2o import methods  # noqa: F401  (registers d2o, d2o-online, d2o-nosample)
from d2o.loss import d2o_loss

__all__ = ["d2o_loss"]
