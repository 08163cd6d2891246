"""Memory: the analytic estimator (weights, gradients, optimizer states, activations, overhead) over the methods'
footprints (what each registered method trains and keeps), the `--fit` search, and the measurement helpers
(tensor bytes by category, peak RSS) that check it."""

from tuneforge.memory.api import device_memory, estimate, input_from_config, parse_size
from tuneforge.memory.estimate import GIB, EstimateInput, MemoryReport, describe, estimate_shape
from tuneforge.memory.footprint import Footprint, Tensors
from tuneforge.memory.shapes import ModelShape, load_shape

_MEASURE = ("TensorBytesProbe", "tensor_bytes")  # torch + transformers: imported when asked for, so `estimate` stays quick


def __getattr__(name: str):
    if name in _MEASURE:
        from tuneforge.memory import measure

        return getattr(measure, name)
    raise AttributeError(f"module 'tuneforge.memory' has no attribute {name!r}")


__all__ = ["GIB", "EstimateInput", "Footprint", "MemoryReport", "ModelShape", "TensorBytesProbe", "Tensors", "describe", "device_memory",
           "estimate", "estimate_shape", "input_from_config", "load_shape", "parse_size", "tensor_bytes"]
