"""OpenAI-compatible HTTP API over a ChatEngine (FastAPI + uvicorn)."""

from tuneforge.serve.api import ServerLimits, create_app

__all__ = ["ServerLimits", "create_app"]
