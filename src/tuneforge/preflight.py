"""Cheap checks across sections that need the filesystem (output folder, model path, datasets, adapter), before
anything heavy loads. Every problem is collected and raised once as (key, message) pairs."""

from tuneforge import TuneforgeError
from tuneforge.config import ConfigError


def _collect(steps: list) -> list:
    problems = []
    for key, step in steps:
        try:
            step()
        except TuneforgeError as e:
            problems += [(getattr(e, "key", None) or key, line) for line in str(e).splitlines()]
    return problems


def check_output(cfg) -> None:
    """The output folder is ours to write: not a file, no finished run (unless overwrite_output_dir), no unfinished
    checkpoints left without resume_from_checkpoint, a resume path that is a checkpoint. Nothing is written."""
    from tuneforge.train.output import resolve_resume

    problems = _collect([("output_dir", lambda: resolve_resume(cfg.output))])
    if problems:
        raise ConfigError(problems)


def check(cfg, world: int | None = None) -> None:
    """Raise ConfigError listing every problem with the model, datasets and adapter. `world`: the number of processes
    the run is planned for (`tuneforge estimate --world_size`); default this launch's."""
    from tuneforge import distributed
    from tuneforge.data import registry
    from tuneforge.distributed import checks as distributed_checks
    from tuneforge.models import aliases

    problems = []
    if not cfg.data.dataset:
        problems.append(("dataset", "dataset is missing; name datasets from dataset_info.json (e.g. `dataset: identity`) "
                                    "or give a file path"))
    if cfg.data.eval_dataset:
        problems.append(("eval_dataset", "eval_dataset is not supported yet; use val_size to hold out part of the training data"))
    steps = [("model_name_or_path", lambda: aliases.resolve(cfg.model.model_name_or_path))]
    if cfg.data.dataset:
        steps.append(("dataset", lambda: registry.resolve(cfg.data.dataset, cfg.data.dataset_dir)))
    if cfg.model.adapter_name_or_path:
        steps.append(("adapter_name_or_path", lambda: _check_adapter(cfg.model.adapter_name_or_path)))
    problems += _collect(steps)
    if not any(key == "model_name_or_path" for key, _ in problems):
        problems += _check_against_model(cfg)
    problems += distributed_checks.problems(cfg, world or distributed.world_size())  # several processes: what cannot work
    if problems:
        raise ConfigError(problems)


def _check_against_model(cfg) -> list:
    """The method section's `validate_model(shape)` (e.g. no more layers than the model has), from config.json alone."""
    check = getattr(cfg.method_section(), "validate_model", None)
    if check is None:
        return []
    from tuneforge.memory.api import shape_of

    try:
        shape = shape_of(cfg.model.model_name_or_path, cfg.model.cache_dir)
    except TuneforgeError:
        return []  # no config.json to read yet (a GGUF not converted): the method checks itself when it applies
    return check(shape)


def _check_adapter(path: str) -> None:
    import os

    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise TuneforgeError(f"adapter_name_or_path `{path}` has no adapter_config.json; point it at a saved LoRA adapter folder")


def check_model(cfg) -> None:
    """For chat, api and export: the model and adapter paths exist (nothing is loaded)."""
    from tuneforge.models import aliases

    steps = [("model_name_or_path", lambda: aliases.resolve(cfg.model.model_name_or_path))]
    if cfg.model.adapter_name_or_path:
        steps.append(("adapter_name_or_path", lambda: _check_adapter(cfg.model.adapter_name_or_path)))
    problems = _collect(steps)
    if problems:
        raise ConfigError(problems)
