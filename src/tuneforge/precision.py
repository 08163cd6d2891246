"""What `torch_dtype: auto` means on this machine, and why (torch-free: config resolution and the estimator ask it).

On a GPU the bf16/fp16 training flag picks the weights' dtype, as before. On a CPU `auto` is bf16 for a LoRA run
(stage sft or pt) over a frozen, unquantized base on a CPU with AMX-BF16 or AVX512-BF16, for a model wide enough for
bf16 matmuls to pay (`MIN_BF16_HIDDEN`): the fused LoRA forward keeps the adapters and optimizer state fp32 and runs
the frozen matmuls in bf16. Measured on SmolLM2-135M (benchmarks/vs_llamafactory.sh, 2 cores): 1.60x fp32's tokens/s,
training losses within 0.006 of fp32's over 30 steps. Held-out quality, examples/marrowick_lora_pt.yaml over 4 seeds:
accuracy 30-55% (bf16) against 45-65% (fp32) on 20 questions, mean probability of the right answer 0.42 (bf16) and
0.37 (fp32), the adapters scored in fp32: within the seed-to-seed spread. Everything else stays fp32: full fine-tuning
(fp32 master weights; `bf16: true` adds autocast), QLoRA, LoRA variants that leave the fused path (DoRA, dropout),
other stages, and CPUs without the instructions, where bf16 runs ~3x slower than fp32. `BF16_AUTO = False` turns the
choice off (fp32, with the faster choice named in the log).
"""

from __future__ import annotations

import logging

from tuneforge import hardware

log = logging.getLogger(__name__)

# SmolLM2-135M (hidden 576) LoRA trained faster in bf16 than fp32 on an AMX CPU (benchmarks/sft_throughput.py);
# below this width the matmuls are too small for bf16 to pay back its casts, and tiny test models stay fp32.
MIN_BF16_HIDDEN = 512
# bf16 as `auto`'s choice where it is faster (False: fp32, with the faster choice named in the reason; see above)
BF16_AUTO = True
# Stages whose bf16 runs were measured (the preference and RL stages keep fp32: their references and value heads were not)
BF16_STAGES = ("sft", "pt")


def auto_dtype(model_cfg, train_args: dict, method=None, hidden: int | None = None, stage: str = "sft") -> tuple[str, str]:
    """The dtype name `torch_dtype: auto` resolves to and the reason, for logs and the resolved config.

    Args:
        model_cfg: the model section (`torch_dtype`, `quantization_bit`).
        train_args: the training flags (`bf16`, `fp16`).
        method: the method section (None: unknown, fp32 on a CPU); bf16 only for a `LoraSection` on the fused path.
        hidden: the model's hidden size (None: unknown, fp32 on a CPU).
        stage: the training stage (bf16 weights were measured for sft and pt).
    """
    if model_cfg.torch_dtype != "auto":
        return model_cfg.torch_dtype, "set in the config"
    if hardware.gpu_present():
        if train_args.get("bf16"):
            return "bfloat16", "auto on a GPU: bf16: true"
        if train_args.get("fp16"):
            return "float16", "auto on a GPU: fp16: true"
        return "float32", "auto on a GPU without bf16/fp16 flags"
    flags = hardware.cpu_bf16_flags()
    if not flags:
        return "float32", "auto: this CPU has neither amx_bf16 nor avx512_bf16 (bf16 runs ~3x slower than fp32 there)"
    why_not = _why_not_bf16(model_cfg, train_args, method, hidden, stage)
    if why_not:
        return "float32", f"auto: CPU has {', '.join(flags)}, but {why_not}"
    if not BF16_AUTO:
        return "float32", (f"auto: float32; this CPU has {', '.join(flags)}, where torch_dtype: bfloat16 runs LoRA over a "
                           "frozen base ~1.5x faster (fp32 adapters): opt in to use it")
    return "bfloat16", (f"auto -> bfloat16: CPU has {', '.join(flags)}; LoRA over a frozen bf16 base of hidden {hidden}"
                        " with fp32 adapters (measured ~1.6x fp32's tokens/s); torch_dtype: float32 keeps fp32")


def _why_not_bf16(model_cfg, train_args: dict, method, hidden: int | None, stage: str = "sft") -> str | None:
    """Why a CPU run with fast bf16 still keeps fp32 weights (None: it does not)."""
    from tuneforge.methods.lora import LoraSection

    if stage not in BF16_STAGES:
        return f"stage {stage} keeps fp32 (bf16 weights were measured for {' and '.join(BF16_STAGES)} only)"

    if not isinstance(method, LoraSection):
        return "bf16 weights pay only for LoRA's frozen base (full fine-tuning keeps fp32 master weights; bf16: true adds autocast)"
    if model_cfg.quantization_bit:
        return "QLoRA's quantized base keeps its own compute dtype"
    if method.use_dora or method.lora_dropout:
        return "DoRA and lora_dropout leave the fused LoRA forward, where bf16 was not measured faster"
    if train_args.get("bf16") or train_args.get("fp16"):
        return "bf16/fp16: true asks for autocast over fp32 weights"
    if train_args.get("bf16") is False:
        return "the config says bf16: false"
    if hidden is None:
        return "the model's hidden size is unknown"
    if hidden < MIN_BF16_HIDDEN:
        return f"the model is narrow (hidden {hidden} < {MIN_BF16_HIDDEN}), where bf16 does not pay"
    return None


def model_hidden(model_cfg) -> int | None:
    """The model's hidden size from its config.json (shipped, folder or converted GGUF) without loading weights."""
    from tuneforge import TuneforgeError
    from tuneforge.memory.api import shape_of

    try:
        return shape_of(model_cfg.model_name_or_path, model_cfg.cache_dir).hidden
    except (TuneforgeError, OSError, ValueError):
        return None


def auto_dtype_of(cfg) -> tuple[str, str]:
    """`auto_dtype` for a whole RunConfig: its model, training flags, method section and model width."""
    if cfg.model.torch_dtype != "auto":
        return cfg.model.torch_dtype, "set in the config"
    method = cfg.method_section()
    hidden = model_hidden(cfg.model) if cfg.method.finetuning_type == "lora" and not hardware.gpu_present() else None
    return auto_dtype(cfg.model, cfg.train.args, method, hidden, cfg.method.stage)
