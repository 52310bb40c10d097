"""What a device can do, declared as data: callers test capabilities, never device names.

Every device class carries ``capabilities = Capabilities(...)``; :func:`capabilities_of` reads it off any object
(an object that declares none can do nothing here, so code treats it as a device reached through bundles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compress.errors import check_parameter

# Model kinds a device's ``measure`` takes:
#   "onnx":   an ONNX file (path or bytes) and ``{input name: shape}``;
#   "module": a torch ``nn.Module`` and its example inputs (a tensor or a tuple of tensors).
MODEL_KINDS = ("onnx", "module")


@dataclass(frozen=True)
class Capabilities:
    """What a device can do from this process.

    Attributes:
        accepts: model kinds ``measure`` takes, a subset of ``MODEL_KINDS``, in order of preference
            (callers holding a torch module export it to ONNX when the first kind is "onnx").
        measurable_here: ``measure`` and ``measure_interleaved`` time models on this host, returning
            ``Measurement``s; when False both raise ``DeviceUnavailableError`` (a board: use a bundle).
        profilable_here: ``profile`` returns per-kernel times on this host, so ``predictors.profile_family``
            (onnxruntime CPU, ``threads=device.threads``) profiles this very device and a latency predictor can
            be fitted here; when False ``profile`` (if present) raises ``DeviceUnavailableError``.

    Raises:
        InvalidParameterError: ``accepts`` is not a tuple of distinct kinds of ``MODEL_KINDS``, a flag is not a
            bool, or ``profilable_here`` is True for a device that does not accept "onnx".
    """

    accepts: tuple[str, ...]
    measurable_here: bool
    profilable_here: bool = False

    def __post_init__(self) -> None:
        check_parameter(isinstance(self.accepts, tuple) and all(k in MODEL_KINDS for k in self.accepts)
                        and len(set(self.accepts)) == len(self.accepts), "accepts", "Capabilities",
                        f"a tuple of distinct model kinds from {MODEL_KINDS}", self.accepts)
        check_parameter(isinstance(self.measurable_here, bool), "measurable_here", "Capabilities", "a bool",
                        self.measurable_here)
        check_parameter(isinstance(self.profilable_here, bool), "profilable_here", "Capabilities", "a bool",
                        self.profilable_here)
        check_parameter(not self.profilable_here or "onnx" in self.accepts, "profilable_here", "Capabilities",
                        "False unless the device accepts 'onnx' models (profiles are onnxruntime's kernels)",
                        self.profilable_here)


# What an object that declares nothing can do: nothing from here (the conservative reading).
NO_CAPABILITIES = Capabilities(accepts=(), measurable_here=False, profilable_here=False)


def capabilities_of(device: Any) -> Capabilities:
    """The ``Capabilities`` a device declares (its ``capabilities`` attribute), or ``NO_CAPABILITIES``.

    Args:
        device: any object; a device class carries ``capabilities = Capabilities(...)``.

    Returns:
        ``device.capabilities`` when it is a :class:`Capabilities`, else ``NO_CAPABILITIES`` (nothing from here).

    Raises:
        Nothing: an object that declares no capabilities is read as one that can do nothing here.
    """
    caps = getattr(device, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else NO_CAPABILITIES
