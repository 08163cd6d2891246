"""Training stages: one module each, registering a Stage record (arguments class, data kind, data and trainer
builders) at its bottom. Every module in this package is imported here, so a new stage is one new file."""

import importlib
import pkgutil

from tuneforge.stages.registry import DATA_KINDS, STAGES, Stage, get, register_stage, unregister_stage

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "common"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DATA_KINDS", "STAGES", "Stage", "get", "register_stage", "unregister_stage"]
