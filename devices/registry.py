"""Device registry: ``register_device(name, factory, aliases=...)``, ``get_device(name, **options)``,
``list_devices()``.

A device is whatever ``factory(**options)`` returns: an object with ``capabilities`` (a
``devices.Capabilities``), ``fingerprint()`` and the methods its capabilities promise (``measure``,
``measure_interleaved``, ``profile``). ``devices.conformance.check_device`` tests that contract.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from compress.errors import check_parameter

from .board import BoardDevice
from .errors import DuplicateDeviceError, UnknownDeviceError, UnknownDeviceOptionError
from .ort_cpu import OrtCpuDevice
from .torch_cpu import TorchCpuDevice


@dataclass(frozen=True)
class DeviceEntry:
    """A registered device: its name, aliases, factory and the keyword options the factory takes.

    Attributes:
        name: the device's registered name (what ``list_devices(include_aliases=False)`` lists).
        factory: the callable ``get_device`` calls with the options (usually the device class).
        aliases: other names ``get_device`` accepts for it.
        options: the keyword options the factory takes, sorted; None: any (the factory takes ``**kwargs``).
    """

    name: str
    factory: Callable[..., Any]
    aliases: tuple[str, ...]
    options: tuple[str, ...] | None


# every registered name and alias -> its entry
DEVICES: dict[str, DeviceEntry] = {}


def factory_options(factory: Callable[..., Any]) -> tuple[str, ...] | None:
    """Keyword arguments ``factory`` takes, sorted; None when it takes ``**kwargs`` (anything)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the factory judge
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(sorted(p.name for p in params
                        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)))


def register_device(name: str, factory: Callable[..., Any], aliases: Iterable[str] = (),
                    options: Iterable[str] | None = None) -> DeviceEntry:
    """Make ``get_device(name, **options)`` (and each alias) return ``factory(**options)``.

    Args:
        name: the device's name, a non-empty str.
        factory: a callable (usually the device class) returning a device: an object with ``capabilities``
            (``devices.Capabilities``), ``fingerprint()`` and the methods its capabilities promise. Run
            ``devices.conformance.check_device(get_device(name))`` to test it.
        aliases: other names for the same device.
        options: the keyword arguments the factory takes; by default read off its signature.

    Returns:
        The registry entry.

    Raises:
        DuplicateDeviceError: ``name`` or an alias is registered already (``unregister_device`` it first).
        InvalidParameterError: a name that is not a non-empty str, or a factory that is not callable.

    Example:
        >>> class MyBoardOverSsh: ...   # capabilities = Capabilities(accepts=("onnx",), measurable_here=True)
        >>> register_device("my-board", MyBoardOverSsh, aliases=("mb",))
        >>> get_device("my-board", host="10.0.0.7")
    """
    aliases = tuple(aliases)
    for n in (name, *aliases):
        check_parameter(isinstance(n, str) and n != "", "name", "register_device", "a non-empty str", n)
    check_parameter(callable(factory), "factory", "register_device", "a callable returning a device", factory)
    names = (name, *aliases)
    taken = [n for n in names if n in DEVICES]
    if taken or len(set(names)) != len(names):
        raise DuplicateDeviceError(
            f"Cannot register device {name!r}: the name(s) {taken or sorted(n for n in names if names.count(n) > 1)} "
            f"are registered already or repeated. Pick another name, or unregister_device(...) the old one first. "
            f"Registered: {', '.join(list_devices())}.")
    opts = factory_options(factory) if options is None else tuple(sorted(options))
    entry = DeviceEntry(name, factory, aliases, opts)
    for n in names:
        DEVICES[n] = entry
    return entry


def unregister_device(name: str) -> DeviceEntry:
    """Remove a registered device (given by its name or an alias) with all its aliases.

    Args:
        name: the device's name or one of its aliases.

    Returns:
        The removed :class:`DeviceEntry` (pass its fields to ``register_device`` to restore it).

    Raises:
        InvalidParameterError: ``name`` is not a str.
        UnknownDeviceError: the name is not registered.
    """
    entry = device_entry(name)
    for n in (entry.name, *entry.aliases):
        DEVICES.pop(n, None)
    return entry


def list_devices(include_aliases: bool = True) -> list[str]:
    """Names accepted by :func:`get_device`, sorted; without aliases, one name per device.

    Args:
        include_aliases: also list every alias (False: one name per device).

    Returns:
        The sorted names.

    Raises:
        Nothing: it only reads the registry.
    """
    return sorted(n for n, e in DEVICES.items() if include_aliases or n == e.name)


def device_entry(name: str) -> DeviceEntry:
    """The registry entry of a device name or alias.

    Args:
        name: a registered device name or alias.

    Returns:
        Its :class:`DeviceEntry` (the same entry for a name and its aliases).

    Raises:
        InvalidParameterError: ``name`` is not a str.
        UnknownDeviceError: the name is not registered (the message lists the known names).
    """
    check_parameter(isinstance(name, str), "name", "get_device", f"a device name (str), one of {list_devices()}",
                    name)
    if name not in DEVICES:
        raise UnknownDeviceError(f"Unknown device {name!r}. Known devices: {', '.join(list_devices())}. "
                                 "Register your own with devices.register_device(name, factory).")
    return DEVICES[name]


def device_options(name: str) -> tuple[str, ...] | None:
    """Keyword options ``get_device(name, ...)`` takes (None: any).

    Args:
        name: a registered device name or alias.

    Returns:
        The option names, sorted, or None when the factory takes ``**kwargs``.

    Raises:
        InvalidParameterError: ``name`` is not a str.
        UnknownDeviceError: the name is not registered (the message lists the known names).
    """
    return device_entry(name).options


def get_device(name: str, **options: Any) -> Any:
    """Create a device by name, e.g. ``get_device("cpu", threads=1)``.

    Args:
        name: a registered device name or alias (``list_devices()``).
        **options: keyword options of the device's factory (e.g. ``threads`` for "cpu" and "torch-cpu").

    Returns:
        ``factory(**options)``: a device object (see :class:`devices.Capabilities` for what it promises).

    Raises:
        InvalidParameterError: ``name`` is not a str, or bad option values (raised by the factory), e.g.
            threads <= 0.
        UnknownDeviceError: the name is not registered (the message lists the known names).
        UnknownDeviceOptionError: options the device does not take (the message lists those it takes).
    """
    entry = device_entry(name)
    unknown = sorted(set(options) - set(entry.options)) if entry.options is not None else []
    if unknown:
        hints = {u: difflib.get_close_matches(u, entry.options, n=1) for u in unknown}
        hint = "".join(f" Did you mean {h[0]!r} for {u!r}?" for u, h in hints.items() if h)
        raise UnknownDeviceOptionError(
            f"Device {name!r} takes no option(s) {', '.join(map(repr, unknown))}. It takes: "
            f"{', '.join(entry.options) or 'no options'}.{hint}")
    return entry.factory(**options)


register_device("cpu", OrtCpuDevice, aliases=("ort-cpu",))
register_device("torch-cpu", TorchCpuDevice)
register_device("board", BoardDevice)
