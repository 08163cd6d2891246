"""Preference optimisation on chosen/rejected pairs: DPO and TRL's other DPO losses (ipo, hinge, robust, ...) on TRL's
DPOTrainer, and the reference-free ORPO and SimPO (stages/reference_free.py). The pairs are tokenized by our chat
template (data/preference.py); LLaMA-Factory's pref_* keys map onto TRL's DPOConfig names.

The reference: with an adapter method (LoRA, prompt tuning) TRL scores it with the adapter off, so no second copy of
the base exists; full and freeze fine-tuning get a frozen copy loaded like the policy, or none with
`precompute_ref_log_probs` (scored once before the first step); orpo and simpo need none."""

import functools
import logging
from dataclasses import replace

from tuneforge.stages.registry import register_stage

log = logging.getLogger(__name__)

# TRL 1.16 DPOTrainer's loss types, and the two this stage computes without a reference
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
              "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
REFERENCE_FREE = ("orpo", "simpo")


def loss_problem(names: list[str]) -> str | None:
    """What is wrong with a list of loss names (None: nothing)."""
    known = DPO_LOSSES + REFERENCE_FREE
    for name in names:
        if name == "kto_pair":
            return "cannot be kto_pair: TRL 1.16's DPO has no such loss; use `stage: kto` (it trains on pairs too: " \
                   "each becomes a desirable and an undesirable row)"
        if name not in known:
            from tuneforge.config.errors import did_you_mean

            return f"must name losses among {', '.join(known)} (got {name!r}){did_you_mean(name, known)}"
    if set(names) & set(REFERENCE_FREE) and len(names) > 1:
        return f"{'/'.join(sorted(set(names) & set(REFERENCE_FREE)))} cannot be combined with other losses ({names}); " \
               f"use it alone (pref_ftx adds the SFT term)"
    return None


def _loss_list(value) -> list[str]:
    """`pref_loss: sigmoid` (LLaMA-Factory's single name) or a list -> TRL's loss_type list."""
    names = [value] if isinstance(value, str) else list(value)
    problem = loss_problem(names)
    if problem:
        raise ValueError(problem)
    return names


def reference_free(cfg) -> bool:
    """Whether the configured loss needs no reference model (orpo, simpo)."""
    return any(n in REFERENCE_FREE for n in cfg.train.args.get("loss_type", ()))


@functools.cache
def args_class() -> type:
    """TRL's DPOConfig plus LLaMA-Factory's `pref_ftx` and `simpo_gamma`; `loss_type` also takes orpo and simpo."""
    from dataclasses import dataclass, field

    from trl import DPOConfig

    @dataclass
    class PreferenceConfig(DPOConfig):
        pref_ftx: float = field(default=0.0, metadata={"help": "Weight of an SFT (negative log-likelihood) term on the "
                                                               "chosen replies added to the preference loss; 0: none."})
        simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO's target reward margin (loss_type: simpo)."})

        def __post_init__(self):
            problem = loss_problem([self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type))
            if problem:
                raise ValueError(f"loss_type (pref_loss) {problem}")
            if self.pref_ftx < 0:
                raise ValueError(f"pref_ftx must be >= 0 (got {self.pref_ftx}); 0 turns the SFT term off")
            super().__post_init__()

    PreferenceConfig.__qualname__ = "PreferenceConfig"  # pickled with the run's arguments: found through __getattr__ below
    return PreferenceConfig


def __getattr__(name: str):
    """`PreferenceConfig` as a module attribute, built on first use (importing TRL only when a config needs it)."""
    if name == "PreferenceConfig":
        return args_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def trainer_class() -> type:
    """TRL's DPOTrainer on our tokenized, cached pairs."""
    from trl import DPOTrainer

    class TokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer whose pairs are already tokenized by our chat template (prompt_ids, chosen_ids, rejected_ids), so
        TRL's own tokenization is skipped; `pref_ftx` adds TRL's `sft` loss on the chosen replies with that weight."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.args.pref_ftx:
                self.loss_types = [*self.loss_types, "sft"]
                self.loss_weights = [*self.loss_weights, self.args.pref_ftx]

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return TokenizedDPOTrainer


def build_data(cfg, tokenizer, progress=None):
    """Tokenized pairs; the collator is TRL's (chosen and rejected rows padded in one batch), made by the trainer."""
    from tuneforge.data.preference import build_pairs

    datasets, stats = build_pairs(cfg.data, tokenizer, cfg.model.cache_dir, progress=progress)
    return datasets, stats, None


def reference_model(cfg, model):
    """The frozen reference of full or freeze fine-tuning: the base loaded exactly like the policy (never from
    `config._name_or_path`, which for a converted GGUF is no loadable id). None when TRL needs no copy: an adapter
    (scored with the adapter off), or `precompute_ref_log_probs` (the policy scores the data before the first step)."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model) or cfg.train.args.get("precompute_ref_log_probs"):
        return None
    from tuneforge import models
    from tuneforge.data.cache import cache_root

    log.info("loading a frozen reference copy of the base (full fine-tuning; precompute_ref_log_probs: true avoids it)")
    folder = models.local_folder(cfg.model, cache_root(cfg.model.cache_dir))
    ref = models.load_model(folder, cfg.model, models.resolve_dtype(cfg.model, cfg.train.args))
    return ref.eval().requires_grad_(False)


def build_trainer(cfg, model, tokenizer, datasets, collator, callbacks):
    from tuneforge.stages.common import build_trainer as common_trainer

    if reference_free(cfg):
        from tuneforge.stages.reference_free import collator as pair_collator
        from tuneforge.stages.reference_free import trainer_class as free_trainer

        return common_trainer(cfg, model, tokenizer, datasets, pair_collator(tokenizer, cfg), callbacks, free_trainer())
    trainer = common_trainer(cfg, model, tokenizer, datasets, None, callbacks, trainer_class(),
                             ref_model=reference_model(cfg, model))
    drop_copied_reference(trainer, cfg)
    return trainer


def drop_copied_reference(trainer, cfg) -> None:
    """TRL copies a PEFT policy's adapter into a frozen `ref` adapter to score the reference. A new LoRA adapter starts
    as the identity (B = 0), so the base with the adapter off is the same reference: the copy is dropped (nothing extra
    in memory, nothing extra saved). A continued adapter (adapter_name_or_path) or PiSSA's start is not the base's
    function, so there the copy stays and is the reference."""
    model = trainer.model
    fresh_lora = (cfg.method.finetuning_type == "lora" and not cfg.model.adapter_name_or_path
                  and not cfg.method_section("lora").pissa_init)
    if fresh_lora and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def validate(cfg) -> list:
    """DPO settings this run cannot honour, as (key, message) pairs: TR-DPO's sync_ref_model with an adapter method
    (the reference is the base with the adapter off, or TRL's adapter copy, which it cannot sync)."""
    from tuneforge import methods

    method = cfg.method.finetuning_type
    if cfg.train.args.get("sync_ref_model") and method in methods.METHODS and methods.get(method).adapter:
        return [("sync_ref_model", f"sync_ref_model (TR-DPO) updates a frozen reference copy, which finetuning_type {method} "
                                   f"does not keep (its reference is the base with the adapter off); drop sync_ref_model, "
                                   f"or use finetuning_type full or freeze")]
    return []


def memory(x, cfg):
    """A batch of b pairs runs 2b rows (chosen and rejected together); full and freeze fine-tuning keep a frozen
    reference copy of the base unless the reference is precomputed or the loss needs none. Reads the method from `x`,
    so `--fit` gets the right answer for every method it tries."""
    from tuneforge.methods.registry import METHODS

    method = METHODS.get(x.finetuning_type)
    copy = not (reference_free(cfg) or cfg.train.args.get("precompute_ref_log_probs") or (method is not None and method.adapter))
    return replace(x, batch=2 * x.batch, reference_copies=1.0 if copy else 0.0)


register_stage(
    "dpo", build_data, build_trainer, args_class=args_class, data_kind="pairwise", packs=False, memory=memory, validate=validate,
    train_defaults={"max_length": None},  # cutoff_len already bounds prompt + reply (data/preference.py)
    llamafactory_names={"pref_beta": ("beta", None), "pref_loss": ("loss_type", _loss_list),
                        "dpo_label_smoothing": ("label_smoothing", None)},
    help="Preference pairs (ranking: true): DPO, IPO, hinge and TRL's other DPO losses, or the reference-free ORPO and "
         "SimPO (pref_loss).",
)
