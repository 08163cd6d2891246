"""LoRA through peft and its variants: QLoRA (on a quantized base), DoRA, rsLoRA, PiSSA initialisation and
LoRA+ (B learns `loraplus_lr_ratio` times faster than A). The base stays frozen."""

import logging
import os
import shutil
from dataclasses import dataclass

from tuneforge import TuneforgeError
from tuneforge.config import field
from tuneforge.methods.registry import register_method
from tuneforge.models.arch import linear_module_names

log = logging.getLogger(__name__)
PISSA_INIT_DIR = "pissa_init"


@dataclass
class LoraSection:
    """Options of finetuning_type: lora."""

    lora_rank: int = field(8, help="Rank r of the adapters; higher fits more and costs more memory.")
    lora_alpha: int | None = field(None, help="Scale alpha (update = alpha/r * BA); default 2 x lora_rank.")
    lora_dropout: float = field(0.0, help="Dropout on the adapter input (0.05-0.1 for small data).")
    lora_target: list[str] = field(["all"], help="Linear layers to adapt: all, or names such as q_proj,v_proj.")
    additional_target: list[str] | None = field(None, help="Modules trained in full and saved with the adapter (e.g. embed_tokens).")
    use_dora: bool = field(False, help="DoRA: learn a magnitude per output and apply LoRA to the direction (more compute).")
    use_rslora: bool = field(False, help="rsLoRA: scale by alpha/sqrt(r) instead of alpha/r, stable at high ranks.")
    pissa_init: bool = field(False, help="PiSSA: initialise A and B from the principal singular vectors of each weight.")
    pissa_iter: int = field(16, help="Fast-SVD iterations for PiSSA (-1: exact SVD, slow on big layers).")
    loraplus_lr_ratio: float | None = field(None, help="LoRA+: B's learning rate = ratio x A's (16 is typical).")

    def validate(self) -> list[str]:
        problems = []
        if self.lora_rank <= 0:
            problems.append(f"lora_rank must be > 0 (got {self.lora_rank})")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            problems.append(f"lora_alpha must be > 0 (got {self.lora_alpha})")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if not self.lora_target:
            problems.append("lora_target is empty; use `all` or names such as q_proj,v_proj")
        if self.loraplus_lr_ratio is not None and self.loraplus_lr_ratio <= 0:
            problems.append(f"loraplus_lr_ratio must be > 0 (got {self.loraplus_lr_ratio})")
        return problems

    def validate_run(self, cfg) -> list[str]:
        problems = []
        if self.pissa_init and cfg.model.quantization_bit:
            problems.append("pissa_init rewrites the base weights, which quantization_bit keeps frozen in 4/8 bits; drop one of them")
        if self.pissa_init and cfg.output.resume_from_checkpoint:
            problems.append("pissa_init cannot resume: the base is rewritten at start; rerun without resume_from_checkpoint")
        if self.pissa_init and cfg.model.adapter_name_or_path:
            problems.append("pissa_init initialises new adapters; drop it when continuing from adapter_name_or_path")
        return problems

    def resolve(self, cfg) -> dict:
        """Values that follow from the others: lora_alpha defaults to 2 x lora_rank."""
        return {"lora_alpha": (2 * self.lora_rank, "2 x lora_rank")} if self.lora_alpha is None else {}


def lora_config_from(sec: LoraSection, model):
    """A peft LoraConfig from the section; `all` means every linear layer but the output head."""
    from peft import LoraConfig, TaskType

    if sec.lora_target == ["all"]:
        targets = "all-linear"
    else:
        available = linear_module_names(model)
        missing = [t for t in sec.lora_target if t not in available]
        if missing:
            raise TuneforgeError(f"lora_target names layers this model lacks: {', '.join(missing)}; "
                                 f"its linear layers are: {', '.join(available)} (or use `all`)")
        targets = list(sec.lora_target)
    init = (f"pissa_niter_{sec.pissa_iter}" if sec.pissa_iter >= 0 else "pissa") if sec.pissa_init else True
    # a sequence classifier (stage rm's reward model): peft's SEQ_CLS task trains and saves its score head too
    seq_cls = type(model).__name__.endswith("ForSequenceClassification")
    return LoraConfig(
        task_type=TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM, r=sec.lora_rank, lora_alpha=sec.lora_alpha or 2 * sec.lora_rank,
        lora_dropout=sec.lora_dropout, target_modules=targets,
        modules_to_save=list(sec.additional_target) if sec.additional_target else None,  # peft extends it in place
        use_dora=sec.use_dora, use_rslora=sec.use_rslora, init_lora_weights=init,
    )


def apply(model, cfg):
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    from tuneforge.distributed import is_main_process
    from tuneforge.methods import lora_forward
    from tuneforge.models.quantization import is_quantized
    from tuneforge.train import checkpointing

    sec: LoraSection = cfg.method_section("lora")
    if is_quantized(model):
        gc = checkpointing.every_n_layers(cfg.train.args) > 0  # which layers: the Trainer applies every_n_layers
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None)
    adapter = cfg.model.adapter_name_or_path
    if adapter:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:
        model = get_peft_model(model, lora_config_from(sec, model))
        if sec.pissa_init and is_main_process():  # keep the initial adapter: saving converts PiSSA to a plain LoRA
            # against the original base. The init is deterministic given the weights, so other ranks build the same model.
            model.save_pretrained(os.path.join(cfg.output.output_dir, PISSA_INIT_DIR))
    lora_forward.fuse(model)
    return model


def optimizer(model, cfg, args):
    """LoRA+: two groups, B (and its magnitude-free peers) at ratio x the learning rate."""
    ratio = cfg.method_section("lora").loraplus_lr_ratio
    if not ratio:
        return None
    from transformers import Trainer

    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    a, b = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (b if "lora_B" in name else a).append(p)
    groups = [{"params": a, "lr": args.learning_rate, "weight_decay": args.weight_decay},
              {"params": b, "lr": args.learning_rate * ratio, "weight_decay": args.weight_decay}]
    log.info("LoRA+: %d tensors at lr %.2e (A and others), %d at lr %.2e (B)", len(a), args.learning_rate, len(b),
             args.learning_rate * ratio)
    return opt_cls(groups, **{k: v for k, v in opt_kwargs.items() if k != "lr"})


def save(model, output_dir, cfg) -> bool:
    """PiSSA adapters are saved converted, so they apply to the original (unmodified) base; by the main process only."""
    if not cfg.method_section("lora").pissa_init:
        return False
    from tuneforge.distributed import is_main_process

    if not is_main_process():
        return True  # saved (by rank 0); every rank answers the same, so all skip the Trainer's own save
    init_dir = os.path.join(output_dir, PISSA_INIT_DIR)
    model.save_pretrained(output_dir, path_initial_model_for_weight_conversion=init_dir)
    shutil.rmtree(init_dir, ignore_errors=True)
    return True


def memory(shape, x):
    """Adapters A (r x in) and B (out x r) on the targeted linears of every layer, in fp32 (DoRA: + a magnitude per
    output); `additional_target` modules (peft modules_to_save: names a module's name ends with) train as full
    copies beside their frozen originals. Every layer keeps its adapted linears' inputs."""
    from tuneforge.memory.footprint import ADAPTER, COPY, EMBED, HEAD, NORM, Footprint, Tensors, matched_parameters, section

    sec: LoraSection = section(LoraSection, x)
    linears = shape.linears()
    targets = linears if list(sec.lora_target) == ["all"] else {k: v for k, v in linears.items() if k in sec.lora_target}
    r, layers = sec.lora_rank, shape.layers
    ts = []
    for a, b in targets.values():
        ts += [Tensors(r * a, layers, ADAPTER), Tensors(r * b, layers, ADAPTER)] + ([Tensors(b, layers, ADAPTER)] if sec.use_dora else [])
    extra = list(sec.additional_target or [])
    copied = matched_parameters(shape, lambda name: any(name.endswith(t) for t in extra)) if extra else {}
    ts += [Tensors(n, 1, COPY, embedding=name == EMBED) for name, n in copied.items()]
    trained = layers if targets else 0
    below_head = any(name not in (HEAD, NORM) for name in copied)  # gradients reach the layers (or the embeddings)
    return Footprint(tuple(ts), trained_layers=trained, frozen_layers=layers - trained if below_head else 0,
                     head_gradient=HEAD in copied,
                     detail={"method": f"LoRA r={r} on {len(targets)} linears x {layers} layers" + (" (DoRA)" if sec.use_dora else "")
                             + (f" + trainable copies of {', '.join(extra)}" if extra else "")})


register_method("lora", LoraSection, apply, optimizer=optimizer, save=save, adapter=True, quantizable=True, memory=memory,
                fit=(("lora", {}, 1.00), ("lora + 8-bit AdamW", {"optim": "adamw_bnb_8bit"}, 0.90),
                     ("qlora 8-bit", {"quantization_bit": 8}, 0.96), ("qlora 4-bit", {"quantization_bit": 4}, 0.89)),
                help="Low-rank adapters on a frozen base (QLoRA with quantization_bit; DoRA, rsLoRA, PiSSA, LoRA+).")
