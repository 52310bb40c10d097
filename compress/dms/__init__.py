"""DMS: differentiable top-k over channels and residual blocks, searched by gradient descent against a budget."""

from .api import PIPELINES, dms
from .search import DMSSettings

__all__ = ["dms", "DMSSettings", "PIPELINES"]
