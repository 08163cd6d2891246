"""Fine-tuning methods: each module registers itself; `get(name)` returns it."""

from tuneforge.methods.registry import METHODS, Method, get, register_method
from tuneforge.methods import freeze, full, galore, lisa, lora, prefix  # noqa: E402,F401  (registration)

__all__ = ["METHODS", "Method", "get", "register_method"]
