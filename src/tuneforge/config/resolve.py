"""Resolution: fill every value that follows from the settings, after validation and before the run.

Validation only collects problems; `resolve(cfg)` returns a copy where `auto`, unset and LLaMA-Factory-style values
are made concrete, logs each value it filled or changed, and records them in `cfg.changes`. The run saves the
resolved config, so `tuneforge_config.yaml` shows what actually ran."""

import copy
import logging

log = logging.getLogger("tuneforge.config")


def resolve(cfg, quiet: bool = False):
    """A resolved copy of a validated RunConfig (the same object if it is resolved already).

    Fills, in order: LLaMA-Factory's defaults (for an LLaMA-Factory config), the stage's train defaults, each method
    section's derived values (its `resolve(cfg)`, e.g. lora_alpha = 2 x lora_rank), packing (on where the method and
    stage keep it exact), the checkpointing keys' spelling for the installed transformers, torch_dtype, and the
    checkpoint `resume_from_checkpoint: auto` points at.
    """
    if cfg.changes is not None:
        return cfg
    out = copy.deepcopy(cfg)
    out.changes = []

    def fill(key, value, why, llamafactory=False):
        before = out.get(key)
        if before == value:
            return
        out.set(key, value)
        out.changes.append((key, before, value, why))
        if not quiet:
            if llamafactory:
                log.info("LLaMA-Factory default applied: %s: %s (%s)", key, _yaml(value), why)
            else:
                log.info("resolved %s: %s (%s)", key, _yaml(value), why)

    _llamafactory_defaults(out, fill)
    _stage_defaults(out, fill)
    section = out.method_section()
    for key, (value, why) in (getattr(section, "resolve", lambda c: {})(out) or {}).items():
        fill(key, value, why)
    _packing(out, fill)
    _checkpointing_spelling(out, fill)
    _dtype(out, fill)
    _resume(out, fill)
    return out


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _llamafactory_defaults(cfg, fill) -> None:
    from tuneforge.config import compat

    on = cfg.method.llamafactory_defaults
    if on is None:
        on = compat.is_llamafactory_config(cfg.given | set(cfg.ignored))
        fill("llamafactory_defaults", on, "an LLaMA-Factory config: it has do_train or LLaMA-Factory-only keys" if on else
             "not an LLaMA-Factory config")
    if not on:
        return
    if not cfg.given & {"gradient_checkpointing", "activation_checkpointing"}:
        fill("gradient_checkpointing", True, "LLaMA-Factory checkpoints activations unless disable_gradient_checkpointing: true",
             llamafactory=True)


def _stage_defaults(cfg, fill) -> None:
    from tuneforge.stages.registry import STAGES

    stage = STAGES.get(cfg.method.stage)
    for key, value in (stage.train_defaults if stage else {}).items():
        if key not in cfg.given:
            fill(key, value, f"stage {stage.name} default")


def _packing(cfg, fill) -> None:
    if cfg.data.packing is not None:
        return
    from tuneforge.methods.registry import METHODS
    from tuneforge.stages.registry import STAGES

    method, stage = METHODS[cfg.method.finetuning_type], STAGES.get(cfg.method.stage)
    on = method.packs and (stage.packs if stage else True)
    why = "exact with this method and stage" if on else (
        f"finetuning_type {method.name} does not keep packed rows apart" if not method.packs else f"stage {stage.name} does not pack")
    fill("packing", on, why)


def _checkpointing_spelling(cfg, fill) -> None:
    from tuneforge.train import checkpointing

    prefix = checkpointing.installed_prefix()
    for old, new in checkpointing.ALIASES:
        src, dst = (old, new) if prefix == "activation" else (new, old)
        if src in cfg.train.args:
            cfg.train.args[dst] = cfg.train.args.pop(src)
            cfg.changes.append((dst, None, cfg.train.args[dst], f"`{src}` as the installed transformers spells it"))
            log.debug("resolved %s: `%s` as the installed transformers spells it", dst, src)


def _dtype(cfg, fill) -> None:
    if cfg.model.torch_dtype != "auto":
        return
    from tuneforge.precision import auto_dtype_of

    fill("torch_dtype", *auto_dtype_of(cfg))


def _resume(cfg, fill) -> None:
    if cfg.output.resume_from_checkpoint != "auto":
        return
    from tuneforge.train.output import newest_complete

    out = cfg.output.output_dir
    found, skipped = newest_complete(out)
    why = f"auto: the newest complete checkpoint in {out}" if found else f"auto: no complete checkpoint in {out} yet"
    fill("resume_from_checkpoint", found, why + "".join(f"; {line}" for line in skipped))


def changed_keys(cfg) -> dict:
    """{key: value} of everything resolution filled (for the event log and the Board)."""
    return {key: after for key, _, after, _ in (cfg.changes or [])}

