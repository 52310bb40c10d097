"""The one-call entry points, ``compress.autoslim`` (``api/autoslim.py``) and ``compress.dms`` (``api/dms.py``):
prepare -> search -> closed loop -> one SlimResult."""
