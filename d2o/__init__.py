"""D²O: Distributional Dispreference Optimization (arXiv:2403.03419).

The loss is d2o/loss.py; the methods d2o, d2o-online and d2o-nosample are d2o/methods.py, named in
harness/registry.py's METHODS.
"""

from d2o.loss import d2o_loss

__all__ = ["d2o_loss"]
