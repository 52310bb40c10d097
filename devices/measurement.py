"""A latency measurement and the fingerprint of the conditions it was taken under."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
