"""What the host CPU's vector width means for channel counts.

onnxruntime's x86 CPU kernels run convolutions in a channel-blocked layout (NCHWc) with blocks of 16 channels on
AVX-512 and 8 on AVX2: a layer with 56 channels costs what 64 cost (measured here: 3x3 convs at 16 x 16, 56 and 64
channels 0.232 ms each, 72 and 80 0.416 / 0.421 ms). Widths are best chosen as multiples of the block.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def channel_block(cpuinfo: str = "/proc/cpuinfo") -> int:
    """16 on AVX-512 CPUs, else 8 (AVX2 and anything unknown)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.split(":", 1)[0].strip().lower() == "flags":
                    return 16 if "avx512f" in line.split() else 8
    except OSError:
        pass
    return 8
