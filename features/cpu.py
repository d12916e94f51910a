"""What the CPU can do, for the two stages' precision choices (extraction's ``--precision bf16``, training's
bfloat16 autocast); here because both stages may import ``features`` and neither may import the other."""
from __future__ import annotations

import re
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions oneDNN uses (AVX512-BF16 or AMX); elsewhere bf16 is emulated and
    slow. Read from the kernel's CPU flags (Linux); other systems are taken not to have them."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return torch.backends.mkldnn.is_available() and bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
