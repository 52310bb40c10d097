"""The ``compress.dms`` import path: ``from compress.dms import dms, DMSSettings, PIPELINES`` keeps working.

The call lives in ``compress.api.dms``, the algorithm in ``compress.search.dms``, the settings in
``compress.settings``. ``compress.dms`` is also the DMS function (``compress.dms(model, latency_ms=...)``); once
this package is imported Python binds the package to that name instead, so the package is callable too and
forwards the call: both spellings stay the one function.
"""

import sys
import types

from compress.api.dms import PIPELINES, dms
from compress.settings import DMSSettings


class CallableModule(types.ModuleType):
    """A module whose call is ``compress.api.dms.dms`` (see the module docstring for why)."""

    def __call__(self, *args, **kwargs):
        return dms(*args, **kwargs)


sys.modules[__name__].__class__ = CallableModule

__all__ = ["dms", "DMSSettings", "PIPELINES"]
