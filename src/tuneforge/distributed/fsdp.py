"""FSDP2 (torch.distributed.fsdp.fully_shard) applied by hand: each decoder layer is one unit, the root holds the
rest (embeddings, final norm, head).

Why by hand: on the CPU, the Trainer and accelerate given `fsdp` run plain DDP without saying so (every rank keeps
the whole model), while fully_shard on a CPU device mesh really shards (each rank holds 1/world of every parameter;
tests/test_scale_fsdp.py checks the shard shapes and the loss curve). `tuneforge train` still refuses `fsdp` on the
CPU (distributed/checks.py) until the run path uses this module: `prepare_for_trainer` (tested with the HF Trainer:
it keeps the FSDP2 model instead of wrapping it in DDP) must be called in run.build right after the model is built,
with the process group up, and saving must gather `full_state_dict` on every rank (rank 0 writes; `save_model` fails
on DTensors, and gathering on rank 0 alone would hang). On GPUs `fsdp` goes to the Trainer (accelerate's FSDP)
unchanged.
"""

from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks (LlamaDecoderLayer, Qwen2DecoderLayer, ...), outermost first."""
    return [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block")) and m is not model]


def mesh(world: int, replicas: int = 1):
    """A CPU device mesh: 1-D (full sharding over every rank), or 2-D (replicate x shard) for hybrid sharding, where
    each group of world/replicas ranks (one node) shards and the groups replicate."""
    from torch.distributed.device_mesh import init_device_mesh

    if replicas <= 1:
        return init_device_mesh("cpu", (world,), mesh_dim_names=("shard",))
    if world % replicas:
        raise ValueError(f"hybrid sharding needs world ({world}) to be a multiple of the replica groups ({replicas})")
    return init_device_mesh("cpu", (replicas, world // replicas), mesh_dim_names=("replicate", "shard"))


def shard(model: nn.Module, device_mesh, cpu_offload: bool = False) -> nn.Module:
    """fully_shard every decoder layer, then the root; the model is changed in place and returned."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    policy = CPUOffloadPolicy(pin_memory=False) if cpu_offload else OffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=device_mesh, offload_policy=policy)
    fully_shard(model, mesh=device_mesh, offload_policy=policy)
    return model


def prepare_for_trainer(model: nn.Module, device_mesh, cpu_offload: bool = False) -> nn.Module:
    """Shard `model` and mark it the way transformers marks a model it sharded at load time, so the Trainer neither
    wraps it in DDP (which refuses DTensor parameters) nor shards it again; FSDP2 reduces the gradients itself.
    Call it on every rank after the method is applied and before the trainer is built."""
    shard(model, device_mesh, cpu_offload=cpu_offload)
    inner = model
    while not hasattr(type(inner), "is_distributed_loading_by_transformers") and hasattr(inner, "model"):
        inner = inner.model  # PeftModel -> LoraModel -> the PreTrainedModel
    inner._is_distributed_loading_by_transformers = True
    return model


def full_state_dict(model: nn.Module) -> dict:
    """The whole (unsharded) weights, gathered on rank 0 (other ranks get {}): what rank 0 saves. A collective:
    every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
