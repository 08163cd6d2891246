"""Training stages: each module builds its trainer from models, methods and data, and registers itself."""

from tuneforge.stages.registry import STAGES, get, register_stage
from tuneforge.stages import sft  # noqa: E402,F401  (registration)

__all__ = ["STAGES", "get", "register_stage"]
