"""Cheap checks across sections that need the filesystem (model path, datasets, output folder), before
anything heavy loads. Every problem is collected and raised once."""

from tuneforge import TuneforgeError
from tuneforge.config import ConfigError


def check(cfg) -> None:
    """Raise ConfigError listing every problem with the model, datasets, stage and output folder."""
    from tuneforge import stages
    from tuneforge.data import registry
    from tuneforge.models import aliases
    from tuneforge.train.output import resolve_resume

    problems = []
    if cfg.method.stage not in stages.STAGES:
        problems.append(f"stage `{cfg.method.stage}` is not implemented yet; available: {', '.join(sorted(stages.STAGES))}")
    if not cfg.data.dataset:
        problems.append("dataset is missing; name datasets from dataset_info.json (e.g. `dataset: identity`) or give a file path")
    steps = [lambda: aliases.resolve(cfg.model.model_name_or_path), lambda: resolve_resume(cfg.output)]
    if cfg.data.dataset:
        steps.append(lambda: registry.resolve(cfg.data.dataset, cfg.data.dataset_dir))
    if cfg.data.eval_dataset:
        problems.append("eval_dataset is not supported yet; use val_size to hold out part of the training data")
    if cfg.model.adapter_name_or_path:
        steps.append(lambda: _check_adapter(cfg.model.adapter_name_or_path))
    for step in steps:
        try:
            step()
        except TuneforgeError as e:
            problems += str(e).splitlines()
    if problems:
        raise ConfigError(problems)


def _check_adapter(path: str) -> None:
    import os

    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise TuneforgeError(f"adapter_name_or_path `{path}` has no adapter_config.json; point it at a saved LoRA adapter folder")


def check_model(cfg) -> None:
    """For chat, api and export: the model and adapter paths exist (nothing is loaded)."""
    from tuneforge.models import aliases

    problems = []
    try:
        aliases.resolve(cfg.model.model_name_or_path)
    except TuneforgeError as e:
        problems.append(str(e))
    if cfg.model.adapter_name_or_path:
        try:
            _check_adapter(cfg.model.adapter_name_or_path)
        except TuneforgeError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(problems)
