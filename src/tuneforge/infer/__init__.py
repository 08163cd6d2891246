"""Inference: load base (+ adapter) with the template saved at training, and answer questions."""

from tuneforge.infer.generate import answer, load_for_inference

__all__ = ["answer", "load_for_inference"]
