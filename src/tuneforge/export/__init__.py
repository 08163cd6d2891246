"""Export: merge an adapter into its base and write a standalone Hugging Face folder or one GGUF file (+ optional
Ollama Modelfile), then check what was written against the trained model."""

from tuneforge.export.merge import merge_adapter
from tuneforge.export.modelfile import ollama_modelfile
from tuneforge.export.pipeline import export_model

__all__ = ["export_model", "merge_adapter", "ollama_modelfile"]
