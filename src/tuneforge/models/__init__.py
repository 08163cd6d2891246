"""Model and tokenizer loading: HF folders, GGUF files (converted once), aliases; architecture facts."""

from tuneforge.models.aliases import ModelSource, resolve
from tuneforge.models.loader import load_model, load_tokenizer, local_folder, resolve_dtype

__all__ = ["ModelSource", "load_model", "load_tokenizer", "local_folder", "resolve", "resolve_dtype"]
