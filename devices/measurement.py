"""A latency measurement and the fingerprint of the conditions it was taken under."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Measurement:
    """Median, quartiles and raw samples (ms) of repeated runs, with the device fingerprint."""

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
