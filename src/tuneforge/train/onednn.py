"""oneDNN's primitive cache, bounded for training on the CPU.

bf16 matmuls on the CPU run through oneDNN (AMX/AVX512-BF16 kernels), which builds a primitive for every distinct
shape and keeps up to 1024 of them. With packing every step has a new row length, so each step adds a few dozen
primitives and the process grows step after step: SmolLM2-135M LoRA in bf16 (batch 4, cutoff 256, packed) peaked at
1.96 GiB after 12 steps and 2.34 after 30, against 1.75 with no cache at all (at 52 tokens/s instead of ~350: every
call rebuilds its primitive). A step needs a few dozen (the distinct linear shapes x forward/backward); 128 keeps them
all: 1.83 GiB after 12 steps at 361 tokens/s (measured with benchmarks/vs_llamafactory.sh's work). Too small a cache
is worse than none (a layer-by-layer cycle longer than the cache misses every time), hence the margin.
fp32 matmuls use MKL/OpenBLAS and never touch this cache.
"""

import os

CAPACITY_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
TRAINING_CAPACITY = 128


def bound_primitive_cache(env: dict | None = None) -> None:
    """Set the cache's capacity for this process and its children unless the user did (before torch loads oneDNN)."""
    env = os.environ if env is None else env
    env.setdefault(CAPACITY_ENV, str(TRAINING_CAPACITY))
