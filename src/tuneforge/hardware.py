"""What the machine has, asked without importing torch where that can be avoided (the estimator and config checks
answer in well under a second; importing torch alone takes about one).

- `cpu_flags()`: the CPU's feature flags from /proc/cpuinfo (Linux; an empty set elsewhere).
- `cpu_has_fast_bf16()`: AMX-BF16 or AVX512-BF16, the instructions that make bf16 matmuls faster than fp32 on a CPU
  (without them bf16 runs ~3x slower than fp32, measured on these machines).
- `gpu_present()`: whether a CUDA device can be used. It asks torch only when torch is already imported or when
  the machine shows signs of an NVIDIA driver; a machine with neither has no usable GPU.
"""

from __future__ import annotations

import functools
import os
import sys

FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return any(flag in cpu_flags() for flag in FAST_BF16_FLAGS)


def cpu_bf16_flags() -> list[str]:
    """The fast-bf16 flags this CPU has (for logs and benchmark lines)."""
    return [flag for flag in FAST_BF16_FLAGS if flag in cpu_flags()]


def _nvidia_driver_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


@functools.lru_cache(maxsize=1)
def gpu_present() -> bool:
    if "torch" not in sys.modules and not _nvidia_driver_visible():
        return False
    import torch

    return bool(torch.cuda.is_available())
