"""Memory: measurement helpers (tensor bytes by category, peak RSS) that check the estimator."""

from tuneforge.memory.measure import TensorBytesProbe, tensor_bytes

__all__ = ["TensorBytesProbe", "tensor_bytes"]
