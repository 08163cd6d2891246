"""What one process holds when training runs over several: DDP replicates everything, ZeRO-1/2/3 and FSDP shard the
optimizer states, then the gradients, then the weights over `world_size` processes.

Checked against measured per-rank peaks of 2-process runs on the CPU (benchmarks/scale_memory.py): DDP adds its
gradient buckets; FSDP/ZeRO-3 hold the root unit (embeddings, head, final norm) and two decoder layers gathered, and
their sharded head weight sends the loss down the plain path (whole-batch logits) instead of the fused chunked one."""

from tuneforge.memory.footprint import BYTES

GIB = 2**30
# FSDP2 on the CPU, per process, beyond the terms below: fitted to benchmarks/scale_memory.py (2-process SmolLM2, LoRA
# and full fine-tuning, 4 ranks measured each: 0.28 and 0.31 GiB above them). Likely the process group and DTensor
# machinery and what glibc keeps of the whole model each rank loads before it is sharded; not split further.
FSDP_CPU_RUNTIME = 0.3 * GIB


def shard(shape, x, weights: float, grads: float, opt: float) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per process.

    ZeRO-3/FSDP also hold what is gathered for compute: the root unit's parameters for the whole step and two decoder
    layers (the one computing and the one prefetched). DDP's own buffers are in `sharded_overhead`."""
    n = max(1, x.world_size)
    s = x.sharding
    if s == "zero1":
        return weights, grads, opt / n
    if s == "zero2":
        return weights, grads / n, opt / n
    if s in ("zero3", "fsdp"):
        root = shape.total_params - shape.layers * shape.layer_params
        gathered = (2 * shape.layer_params + root) * BYTES[x.dtype] if n > 1 else 0.0
        return weights / n + gathered, grads / n, opt / n
    return weights, grads, opt


def sharded_overhead(shape, x, grads: float, detail: dict) -> float:
    """Bytes a process of a multi-process run holds beyond its share of weights, gradients and optimizer states,
    each named in detail["overhead"]:

    - DDP: its gradient buckets, a flat copy of the gradients the all-reduce works on (transformers leaves
      `gradient_as_bucket_view` off);
    - FSDP / ZeRO-3: sharded weights send the fused chunked LM-head loss down the plain path
      (distributed.is_sharded), so whole-batch fp32 logits and loss buffers replace the one chunk the activations count;
      the gathered units' gradients are whole until reduce-scattered; FSDP2 on the CPU: FSDP_CPU_RUNTIME.
    """
    if x.world_size <= 1:
        return 0.0
    extra = 0.0
    if x.sharding == "ddp" and grads:
        extra = grads
        detail["overhead"] = detail.get("overhead", "") + f" + DDP gradient buckets {grads / GIB:.3f} GiB"
    if x.sharding in ("zero3", "fsdp"):
        from tuneforge.memory.estimate import LOSS_BUFFERS
        from tuneforge.models.heads import CHUNK_BYTES, PLAIN_HEAD_MODEL_TYPES

        parts = []
        if x.supervised_logits_only and shape.model_type in PLAIN_HEAD_MODEL_TYPES:  # else the plain path is counted
            whole = x.batch * x.seq * shape.vocab * 4
            loss = max(LOSS_BUFFERS * whole - 2 * min(CHUNK_BYTES, whole), 0.0)
            parts.append(("sharded head, plain loss buffers", loss))
        root = shape.total_params - shape.layers * shape.layer_params
        unsharded = min(grads * x.world_size, (2 * shape.layer_params + root) * BYTES[x.dtype])
        if unsharded:  # a gathered unit's gradient is whole until it is reduce-scattered
            parts.append(("unsharded gradients of the gathered units", unsharded))
        if x.sharding == "fsdp" and x.device == "cpu":
            parts.append(("FSDP2 on the CPU (measured)", FSDP_CPU_RUNTIME))
        for what, nbytes in parts:
            extra += nbytes
            detail["overhead"] = detail.get("overhead", "") + f" + {what} {nbytes / GIB:.3f} GiB"
    return extra
