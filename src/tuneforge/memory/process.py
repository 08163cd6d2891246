"""The whole training process around its tensors, on the CPU: the interpreter and libraries, the checkpoint's file pages
(counted in RSS while the model loads; a quantizing load copies the tensors it leaves unconverted off the file, so
none stay mapped while training) and what each malloc keeps of the freed activations. Turns the tensor estimate into
the peak RSS `/usr/bin/time -v` reports.

Constants were measured on this project's CPU machines (benchmarks/estimator_accuracy.py; README "Memory estimate").
"""

import json
import os
import struct
from dataclasses import dataclass

GIB = 2**30
# Python, torch, transformers, peft, datasets, tuneforge and a tokenizer, before the model loads (RSS, measured)
BASELINE = {"glibc": 0.52 * GIB, "glibc-tuned": 0.52 * GIB, "tcmalloc": 0.53 * GIB, "jemalloc": 0.53 * GIB, "mimalloc": 0.56 * GIB}
# Freed activation blocks a malloc keeps mapped at the training peak, as a share of the activations (fitted: FIT rows
# of benchmarks/estimator_accuracy.py). glibc with its default dynamic mmap threshold keeps freed tensors in its heap.
RETENTION = {"glibc": 0.4, "glibc-tuned": 0.05, "tcmalloc": 0.03, "jemalloc": 0.03, "mimalloc": 0.07}
# Libraries' code pages touched once training runs, and the Trainer, data and autograd bookkeeping (fitted likewise)
RUNTIME = 0.15 * GIB
# bf16 matmuls run through oneDNN: its primitive cache (bounded to 128 by train/onednn.py), JIT kernels and scratch
# buffers. Fitted on the FIT rows of bf16 SmolLM2 without checkpointing in benchmarks/estimator_accuracy.py (mimalloc:
# 1.88 GiB measured, 1.69 estimated without it); held out: the checkpointed bf16 rows and the 30-step
# vs-LLaMA-Factory bf16 run (2.00 GiB measured, 1.82 estimated)
ONEDNN_BF16 = 0.2 * GIB
MALLOCS = tuple(RETENTION)
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64", "I8": "int8", "U8": "uint8"}


def malloc_key(planned: str, env: dict[str, str]) -> str:
    """The estimator's malloc for what `train.allocator.planned` says; glibc with its tunables set is `glibc-tuned`."""
    if planned == "glibc" and any(k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return "glibc-tuned"
    return planned if planned in RETENTION else "glibc"


@dataclass
class Checkpoint:
    """The weight files of a model folder: their bytes on disk and the dtype most of those bytes are in."""

    nbytes: int
    dtype: str


def checkpoint_of(folder: str) -> Checkpoint | None:
    """Bytes and dominant dtype of the folder's safetensors files, from their headers alone (None: none there)."""
    if not os.path.isdir(folder):
        return None
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")]
    if not files:
        return None
    by_dtype: dict[str, int] = {}
    total = 0
    for path in files:
        total += os.path.getsize(path)
        try:
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            continue
        for name, meta in header.items():
            if name != "__metadata__" and isinstance(meta, dict):
                start, end = meta.get("data_offsets", (0, 0))
                by_dtype[meta.get("dtype", "?")] = by_dtype.get(meta.get("dtype", "?"), 0) + end - start
    dominant = max(by_dtype, key=by_dtype.get) if by_dtype else "?"
    return Checkpoint(total, SAFETENSORS_DTYPES.get(dominant, dominant.lower()))


def load_peak(weights: float, file_bytes: float, same_dtype: bool, quantized: bool, largest_tensor: float) -> tuple[float, str]:
    """(bytes above the baseline, how) while the model loads: the loaded weights plus every file page the load read,
    plus one tensor in flight; a same-dtype unquantized load maps the file as the weights themselves."""
    if same_dtype and not quantized:
        return weights, "the weights are the checkpoint's mapped pages"
    how = "quantized" if quantized else "converted"
    return weights + file_bytes + largest_tensor, f"{how} weights + the checkpoint's {file_bytes / GIB:.2f} GiB of file pages"
