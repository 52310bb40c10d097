"""A latency measurement and the fingerprint of the conditions it was taken under."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from compress.errors import InvalidParameterError, check_parameter, is_finite_number, is_int


@dataclass
class Measurement:
    """Median, quartiles and raw samples (ms) of repeated runs, with the device fingerprint.

    Attributes:
        median_ms: median latency of one run (one forward pass at the measured batch size), in milliseconds.
        p25_ms: 25th percentile of the samples, in milliseconds.
        p75_ms: 75th percentile of the samples, in milliseconds.
        runs: number of timed runs (len(samples_ms)); warm-up runs are not counted.
        samples_ms: every timed run's latency in milliseconds, in the order taken (round order when interleaved).
        fingerprint: the device's ``fingerprint()``: JSON-able conditions of the measurement (host, threads,
            library versions, ...).
        burst: samples per round when timed interleaved with other models (see profile_device.round_ratio);
            1 otherwise.
    """

    median_ms: float
    p25_ms: float
    p75_ms: float
    runs: int
    samples_ms: list[float] = field(repr=False)
    fingerprint: dict
    burst: int = 1  # samples per round when timed interleaved (see profile_device.round_ratio)

    @classmethod
    def from_stats(cls, stats: dict, fingerprint: dict) -> "Measurement":
        return cls(stats["median_ms"], stats["p25_ms"], stats["p75_ms"], stats["runs"], stats["samples_ms"],
                   fingerprint, int(stats.get("burst", 1)))

    def to_dict(self) -> dict:
        return asdict(self)


# Options of the measurement protocol (``profile_device.measure`` / ``measure_interleaved`` / ``profile_model``):
# name -> (check, what it must be).
PROTOCOL_OPTIONS: dict[str, tuple] = {
    "warmup": (lambda v: is_int(v) and v >= 0, "an int >= 0 (untimed runs first)"),
    "min_runs": (lambda v: is_int(v) and v >= 0, "an int >= 0 (timed runs at least)"),
    "max_runs": (lambda v: is_int(v) and v >= 1, "an int >= 1 (timed runs at most)"),
    "rel_tol": (lambda v: is_finite_number(v) and v >= 0, "a finite number >= 0 (median stability, relative)"),
    "burst": (lambda v: is_int(v) and v >= 1, "an int >= 1 (runs per model and round)"),
    "kernel_runs": (lambda v: is_int(v) and v >= 1, "an int >= 1 (profiled runs)"),
}


def check_protocol(protocol: dict, allowed: tuple[str, ...], where: str) -> None:
    """Refuse protocol options ``where`` does not take, or values out of range, naming them.

    Args:
        protocol: the keyword options given (e.g. ``{"min_runs": 20}``).
        allowed: the option names ``where`` takes (keys of :data:`PROTOCOL_OPTIONS`).
        where: the method, for the message (e.g. ``"OrtCpuDevice.measure"``).

    Raises:
        InvalidParameterError: an unknown option (the message lists those taken) or a value out of range.
    """
    unknown = sorted(set(protocol) - set(allowed))
    if unknown:
        raise InvalidParameterError(f"{where} takes no measurement option(s) {unknown}. It takes: "
                                    f"{', '.join(allowed)}.")
    for name, value in protocol.items():
        ok, what = PROTOCOL_OPTIONS[name]
        check_parameter(ok(value), name, where, what, value)
