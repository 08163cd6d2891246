"""Export: merge an adapter into its base and save a standalone Hugging Face folder (+ optional Ollama Modelfile)."""

from tuneforge.export.merge import export_model, merge_adapter
from tuneforge.export.modelfile import ollama_modelfile

__all__ = ["export_model", "merge_adapter", "ollama_modelfile"]
