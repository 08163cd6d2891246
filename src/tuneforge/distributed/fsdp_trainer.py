"""The Trainer side of FSDP2 on the CPU (fsdp.py shards the model): no DDP around the sharded model, and saves that
gather on every rank while rank 0 writes.

What the Trainer cannot do with a model sharded outside it: its save_model writes DTensors (it fails), its optimizer
checkpoint would hold rank 0's shards only, and its resume reads whole weights into sharded parameters. Here the
final save and every checkpoint gather the full weights (the adapter alone for adapter methods) and the full
optimizer state on every rank (collectives), rank 0 writes them as an ordinary checkpoint (adapter or model
safetensors, optimizer.pt, scheduler.pt, one rng_state per rank), and a resume loads them back into the shards. So a
checkpoint reads like a one-process one, and the resume is exact (same optimizer state, scheduler, RNG, data order).
"""

import contextlib
import logging
import os

from tuneforge.distributed import fsdp, is_main_process

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def _is_adapter(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


class FsdpTrainer:
    """Trainer mixin for a model sharded by `fsdp.maybe_shard` (set in front of the stage's trainer class by
    `adapt_trainer`)."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The adapter (adapter methods) or the whole model, gathered on every rank, written by rank 0 with the
        tokenizer: what a one-process run writes."""
        import torch

        output_dir = output_dir or self.args.output_dir
        state = fsdp.full_state_dict(self.model, trainable_only=_is_adapter(self.model))
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            self.model.save_pretrained(output_dir, state_dict=state)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        _barrier()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        import torch
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(self.model, _torch_optimizer(self.optimizer),
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, OPTIMIZER_FILE))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        import torch
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = torch.load(os.path.join(checkpoint, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
        set_optimizer_state_dict(self.model, _torch_optimizer(self.optimizer), state,
                                 options=StateDictOptions(full_state_dict=True))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_FILE), weights_only=True))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        model = model or self.model
        state = _read_weights(model, resume_from_checkpoint)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
        if missing:
            from tuneforge import TuneforgeError

            raise TuneforgeError(f"checkpoint {resume_from_checkpoint} lacks {len(missing)} trained weights "
                                 f"(e.g. {missing[0]}); resume from a checkpoint of this run", key="resume_from_checkpoint")
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
        log.info("FSDP2: weights of %s loaded into the shards", resume_from_checkpoint)

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self):
        """Gradient accumulation: reduce the gradients once, after the last micro-batch (the library's version reads a
        load-time distributed config this model has not)."""
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        folder = os.environ.get(fsdp.SHAPES_ENV)
        if folder and self.state.global_step == 0:
            fsdp.write_shard_shapes(self.model, folder)
        return loss


def _read_weights(model, checkpoint: str) -> dict:
    """The checkpoint's weights under the model's own parameter names (a PEFT adapter file drops the adapter name)."""
    import json

    from safetensors.torch import load_file

    if _is_adapter(model):
        saved = load_file(os.path.join(checkpoint, "adapter_model.safetensors"))
        return {name: saved[key] for name, key in _adapter_names(model).items() if key in saved}
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(os.path.join(checkpoint, name)))
    return state


def _adapter_names(model) -> dict[str, str]:
    """Model parameter name -> its key in the saved adapter file, as PEFT names it when saving."""
    import torch
    from peft import get_peft_model_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    marked = get_peft_model_state_dict(model, state_dict={n: torch.tensor(float(i)) for i, n in enumerate(names)})
    return {names[int(v.item())]: key for key, v in marked.items()}


_CLASSES: dict[type, type] = {}


def adapt_trainer(trainer):
    """`trainer` (already built by its stage) made to train and save a model `fsdp.maybe_shard` sharded; the same
    trainer otherwise. Its class gets FsdpTrainer in front (the stage's own class stays behind it), and it is told
    the model places and reduces itself, so accelerate neither moves nor wraps it."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or not any(type(p).__name__ == "DTensor" for p in trainer.model.parameters()):
        return trainer
    cls = type(trainer)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (FsdpTrainer, cls), {"__doc__": f"{cls.__name__} over an FSDP2 model (distributed/fsdp_trainer.py).",
                                                                "__module__": __name__, "__qualname__": cls.__qualname__})
    trainer.__class__ = _CLASSES[cls]
    trainer.is_distributed_loading_by_transformers = True
    if is_main_process():
        log.info("FSDP2: the trainer keeps the sharded model (no DDP); saves gather the full weights, rank 0 writes")
    return trainer
