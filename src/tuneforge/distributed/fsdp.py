"""FSDP2 (torch.distributed.fsdp.fully_shard) applied by hand: each decoder layer is one unit, the root holds the
rest (embeddings, final norm, head).

Why by hand: on the CPU, the Trainer and accelerate given `fsdp` run plain DDP without saying so (every rank keeps
the whole model), while fully_shard on a CPU device mesh really shards (each rank holds 1/world of every parameter).
So on the CPU with several processes `tuneforge train` shards here: run.build calls `maybe_shard` right after the
model is built with the method applied, hands the trainer a config without `fsdp` (`trainer_config`) and then
`adapt_trainer` (fsdp_trainer.py: no DDP wrap, checkpoints and the final save gathered on every rank, rank 0 writes).
On GPUs `fsdp` goes to the Trainer (accelerate's FSDP) unchanged and nothing here runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch loads only when a model is sharded: the launcher's checks read `options` and `problems`
    from torch import nn

log = logging.getLogger(__name__)
SHAPES_ENV = "TUNEFORGE_TEST_SHARD_SHAPES"  # tests: a folder where each rank writes its local shard shapes in training


class Options(NamedTuple):
    """What the `fsdp` / `fsdp_config` train keys ask for, in transformers' spelling (`full_shard`, `shard_grad_op`,
    `hybrid_shard`, `hybrid_shard_zero2`, `offload`, `auto_wrap`; fsdp_config `cpu_offload`, `reshard_after_forward`)."""

    hybrid: bool  # shard within a node, replicate across nodes
    reshard_after_forward: bool  # False for the ZeRO-2-like strategies (shard_grad_op, hybrid_shard_zero2)
    cpu_offload: bool


def _items(value) -> list[str]:
    if value in (None, False, "", []):
        return []
    if value is True:
        return ["full_shard"]
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def options(args: dict) -> Options:
    """The FSDP2 options of a run's train keys (`fsdp: true` means full_shard)."""
    items = _items(args.get("fsdp"))
    config = args.get("fsdp_config") if isinstance(args.get("fsdp_config"), dict) else {}
    reshard = not any(i in ("shard_grad_op", "hybrid_shard_zero2") for i in items)
    reshard = bool(config.get("reshard_after_forward", reshard)) if isinstance(config.get("reshard_after_forward"), bool) else reshard
    return Options(hybrid=any(i.startswith("hybrid_shard") for i in items), reshard_after_forward=reshard,
                   cpu_offload="offload" in items or bool(config.get("cpu_offload", False)))


def problems(args: dict) -> list[tuple[str, str]]:
    """(key, message) for `fsdp` values FSDP2 on the CPU cannot run (transformers' own validation already refuses
    unknown options, and hybrid_shard / no_shard unless fsdp_config has version: 1)."""
    items = _items(args.get("fsdp"))
    out = []
    if "no_shard" in items:
        out.append(("fsdp", "fsdp no_shard keeps every parameter whole on every rank, which is DDP: remove `fsdp` "
                            "(several processes train with DDP by default)"))
    return out


def applies(cfg) -> bool:
    """Whether this run shards here: `fsdp` is set, several processes, no CUDA (on GPUs the Trainer does it)."""
    from tuneforge.distributed import world_size
    from tuneforge.distributed.checks import cuda_available, strategy

    return strategy(cfg) == "fsdp" and world_size() > 1 and not cuda_available()


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


def shard(model: nn.Module, device_mesh, cpu_offload: bool = False, reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard every decoder layer, then the root; the model is changed in place and returned."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    policy = CPUOffloadPolicy(pin_memory=False) if cpu_offload else OffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=device_mesh, offload_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=device_mesh, offload_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


def full_state_dict(model: nn.Module, trainable_only: bool = False) -> dict:
    """The whole (unsharded) weights, gathered on rank 0 (other ranks get {}): what rank 0 saves. A collective:
    every rank must call it. `trainable_only` gathers just the parameters that train (an adapter), not the base."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if trainable_only:
        from tuneforge.distributed import is_main_process

        gathered = {name: p.full_tensor().detach().cpu() if hasattr(p, "full_tensor") else p.detach().cpu()
                    for name, p in model.named_parameters() if p.requires_grad}
        return gathered if is_main_process() else {}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def maybe_shard(cfg, model: nn.Module) -> nn.Module:
    """`model` sharded with FSDP2 when this run shards here (see `applies`), else `model` unchanged. Brings the
    process group up (gloo, the Trainer's `ddp_timeout`) when the Trainer has not yet."""
    if not applies(cfg):
        return model
    import datetime

    import torch.distributed as dist

    from tuneforge.distributed import world_size

    if not dist.is_initialized():
        timeout = cfg.train.get("ddp_timeout") or 1800
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=int(timeout)))
    opts, world = options(cfg.train.args), world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world)) or world
    replicas = world // local if opts.hybrid and world % local == 0 else 1
    shard(model, mesh(world, replicas), cpu_offload=opts.cpu_offload, reshard_after_forward=opts.reshard_after_forward)
    log.info("FSDP2: %d decoder layers and the root sharded over %d processes (%s%s)", len(decoder_layers(model)), world,
             f"{replicas} replica groups x {world // replicas}" if replicas > 1 else "full sharding",
             ", parameters offloaded to the CPU" if opts.cpu_offload else "")
    return model


def trainer_config(cfg):
    """`cfg` without the `fsdp` / `fsdp_config` train keys when this run shards here, so the Trainer and accelerate
    neither shard the model again nor wrap it in DDP; `cfg` itself otherwise."""
    if not applies(cfg):
        return cfg
    args = {k: v for k, v in cfg.train.args.items() if k not in ("fsdp", "fsdp_config")}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, args=args))


def write_shard_shapes(model: nn.Module, folder: str) -> None:
    """Tests: this rank's local and full parameter shapes, to shards-rank<N>.json in `folder`."""
    import json

    from tuneforge.distributed import rank

    shapes = {name: {"local": list(getattr(p, "to_local", lambda: p)().shape), "full": list(p.shape)}
              for name, p in model.named_parameters()}
    with open(os.path.join(folder, f"shards-rank{rank()}.json"), "w", encoding="utf-8") as fh:
        json.dump(shapes, fh)
