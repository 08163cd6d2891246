"""What one process holds when training runs over several: DDP replicates everything, ZeRO-1/2/3 and FSDP shard the
optimizer states, then the gradients, then the weights over `world_size` processes."""

from tuneforge.memory.footprint import BYTES


def shard(shape, x, weights: float, grads: float, opt: float) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per process. ZeRO-3/FSDP also hold the layers gathered for compute."""
    n = max(1, x.world_size)
    s = x.sharding
    if s == "zero1":
        return weights, grads, opt / n
    if s == "zero2":
        return weights, grads / n, opt / n
    if s in ("zero3", "fsdp"):
        gathered = 2 * shape.layer_params * BYTES[x.dtype] if n > 1 else 0.0
        return weights / n + gathered, grads / n, opt / n
    return weights, grads, opt
