"""A decoder-only model's shape from its config.json alone: sizes of every weight matrix, parameter counts.
Ships the configs of popular models so `--model llama3-8b` works offline."""

import json
import os
from dataclasses import dataclass

from tuneforge import TuneforgeError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool = False
    gated_mlp: bool = True
    name: str = ""
    model_type: str = ""

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer inside one decoder layer."""
        h, i = self.hidden, self.intermediate
        out = {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim), "o_proj": (self.q_dim, h),
               "up_proj": (h, i), "down_proj": (i, h)}
        if self.gated_mlp:
            out["gate_proj"] = (h, i)
        return out

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    @property
    def layer_params(self) -> int:
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.layer_linear_params + bias + 2 * self.hidden  # two RMSNorms

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        return self.embedding_params + self.head_params + self.layers * self.layer_params + self.hidden

    @classmethod
    def from_config(cls, cfg: dict, name: str = "") -> "ModelShape":
        try:
            h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
            return cls(vocab=cfg["vocab_size"], hidden=h, intermediate=cfg["intermediate_size"], layers=cfg["num_hidden_layers"],
                       heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=cfg.get("head_dim") or h // heads,
                       tied=bool(cfg.get("tie_word_embeddings", False)),
                       qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
                       name=name or cfg.get("_name_or_path", ""), model_type=cfg.get("model_type", ""))
        except KeyError as e:
            raise TuneforgeError(f"model config of `{name}` lacks {e}; the estimator needs a decoder-only config.json") from None


def shipped_models() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


ALIASES = {"smollm2-135m-instruct": "smollm2-135m", "smollm2": "smollm2-135m"}


def load_shape(model: str) -> ModelShape:
    """Shape of a shipped model name (llama3-8b, ...), a folder with config.json, a config.json file, or a GGUF
    (its converted folder in the cache, else the alias table).

    Raises:
        TuneforgeError: naming the model and listing the shipped names.
    """
    key = ALIASES.get(model.lower(), model.lower())
    path = os.path.join(CONFIG_DIR, f"{key}.json")
    if not os.path.isfile(path):
        if os.path.isdir(model) and os.path.isfile(os.path.join(model, "config.json")):
            path = os.path.join(model, "config.json")
        elif os.path.isfile(model) and model.endswith(".json"):
            path = model
        else:
            from tuneforge.config.errors import did_you_mean

            raise TuneforgeError(f"model `{model}`: no config.json to estimate from{did_you_mean(key, shipped_models())}; "
                                 f"give a model folder, a config.json, or one of {', '.join(shipped_models())}")
    with open(path) as fh:
        return ModelShape.from_config(json.load(fh), name=model)
