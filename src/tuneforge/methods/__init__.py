"""Fine-tuning methods: one module each, registered by the `register_method(...)` line at its bottom. Every module in
this package is imported here, so a new method is one new file."""

import importlib
import pkgutil

from tuneforge.methods.registry import METHODS, FitCandidate, Method, get, names, register_method, unregister_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry" and not _module.name.endswith("_forward"):  # torch kernels lora.py imports on use
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "FitCandidate", "Method", "get", "names", "register_method", "unregister_method"]
