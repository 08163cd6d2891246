"""Inference: the ChatEngine (base + adapter, saved template), terminal chat, one-shot answers."""

from tuneforge.infer.engine import ChatEngine, GenerationSettings, Reply
from tuneforge.infer.generate import answer, load_for_inference

__all__ = ["ChatEngine", "GenerationSettings", "Reply", "answer", "load_for_inference"]
