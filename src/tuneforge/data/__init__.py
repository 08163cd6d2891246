"""Datasets: LLaMA-Factory registry, file loaders, format converters, chat templates with loss masks, collators."""

from tuneforge.data.pipeline import build, load_conversations, split, tokenize
from tuneforge.data.collator import build_collator
from tuneforge.data.errors import DataError
from tuneforge.data.templates import IGNORE_INDEX, apply_template, encode

__all__ = ["DataError", "IGNORE_INDEX", "apply_template", "build", "build_collator", "encode", "load_conversations", "split", "tokenize"]
