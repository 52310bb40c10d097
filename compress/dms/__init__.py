"""DMS: differentiable top-k over channels and residual blocks, searched by gradient descent against a budget.

The call lives in ``compress.api.dms``, the algorithm in ``compress.search.dms``; this package keeps the
``compress.dms`` import path.
"""

from compress.api.dms import PIPELINES, dms
from compress.settings import DMSSettings

__all__ = ["dms", "DMSSettings", "PIPELINES"]
