"""Pieces every stage shares: load the tokenizer and the model with the method applied, build a Trainer with the
method's optimizer and callbacks. Training, saving and the event log are the run path's (tuneforge.run)."""

import logging

log = logging.getLogger(__name__)


def load_tokenizer(cfg, folder: str):
    """The tokenizer of the local model `folder` with the configured chat template."""
    from tuneforge import models, stages
    from tuneforge.data import apply_template
    from tuneforge.data.templates import TOKENIZER_OWN

    tokenizer = models.load_tokenizer(folder, cfg.model)
    stage = stages.STAGES.get(cfg.method.stage)
    if stage is not None and stage.data_kind == "text" and cfg.data.template in TOKENIZER_OWN and not tokenizer.chat_template:
        return tokenizer  # plain text needs no chat template: a base model without one trains as it is
    apply_template(tokenizer, cfg.data.template, log)
    return tokenizer


def load_model(cfg, folder: str):
    """The model with the method applied (which parameters train). Seeded first, so adapter and virtual-token
    initialisation is the same on every run of the same config."""
    from transformers import set_seed

    from tuneforge import methods, models
    from tuneforge.models.arch import count_parameters

    set_seed(cfg.data.seed)
    attn = None
    if cfg.data.packing and cfg.model.attn_implementation == "sdpa":
        from tuneforge.models import packed_attention

        attn = packed_attention.register()  # SDPA per packed example instead of one masked square
    model = models.load_model(folder, cfg.model, models.resolve_dtype(cfg.model, cfg.train.args), attn)
    model = methods.get(cfg.method.finetuning_type).apply(model, cfg)
    trainable, total = count_parameters(model)
    log.info("method %s: %s trainable of %s parameters (%.3f%%)", cfg.method.finetuning_type, f"{trainable:,}", f"{total:,}",
             100 * trainable / max(total, 1))
    return model


def training_arguments(cfg):
    """The stage's arguments object (TrainingArguments or a TRL config) with the values the method sets."""
    from tuneforge import methods, stages
    from tuneforge.config.train_args import build_training_arguments

    method = methods.get(cfg.method.finetuning_type)
    return build_training_arguments(cfg, overrides=method.training_args(cfg), args_class=stages.get(cfg.method.stage).args_class())


def build_trainer(cfg, model, tokenizer, datasets: dict, collator, callbacks: list, trainer_cls=None, **trainer_kwargs):
    """A Trainer (`trainer_cls`, default transformers.Trainer) with the method's optimizer groups and callbacks plus
    `callbacks` (the run path's logs and event log). Its class gets train/checkpoints.AtomicCheckpoints: checkpoints are
    written atomically and a resume is checked against this run's config and data."""
    import torch
    from transformers import Trainer

    from tuneforge import methods
    from tuneforge.train.checkpoints import with_atomic_checkpoints

    method = methods.get(cfg.method.finetuning_type)
    args = training_arguments(cfg)
    optim = getattr(args.optim, "value", args.optim)
    if "paged" in optim and not torch.cuda.is_available():
        log.warning("optim %s pages optimizer state through CUDA unified memory; on the CPU there is nothing to page to, "
                    "so bitsandbytes keeps the state in ordinary memory (same numbers, no paging)", optim)
    optimizer = method.optimizer(model, cfg, args)
    trainer = with_atomic_checkpoints(trainer_cls or Trainer)(  # crash-safe checkpoints, checked resumes
        model=model, args=args, train_dataset=datasets["train"], eval_dataset=datasets.get("eval"),
        processing_class=tokenizer, data_collator=collator, optimizers=(optimizer, None),
        callbacks=[*callbacks, *method.callbacks(cfg)], **trainer_kwargs,
    )
    trainer.run_config = cfg
    return trainer
