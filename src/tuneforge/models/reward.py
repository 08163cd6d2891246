"""Reward models trained by `stage: rm`: tell a reward folder's kind, load it to score conversations, or share the
policy's base in memory (PPO's model-shared reward: the reward LoRA adapter and its score head on the same base).

A reward folder is either a LoRA adapter of a sequence classifier (adapter_config.json, with the score head saved
beside the adapter as peft's `modules_to_save`) or a full sequence classifier with one label (config.json). A reply
is scored the way the rm stage trained: the chat template on the prompt, then the reply's tokens, and the score is
read at the rightmost token that is not the pad token (transformers' sequence-classification rule)."""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
SCORE_WEIGHT = "score.weight"  # the scalar head of transformers' *ForSequenceClassification models


def reward_kind(path: str, key: str = "reward_model") -> str:
    """`lora` (an adapter with a score head) or `full` (a sequence classifier with one label); only headers are read.

    Raises:
        TuneforgeError (naming `key`): the folder is missing or is not a reward model.
    """
    if not path or not os.path.isdir(path):
        raise TuneforgeError(f"{key} `{path}` is not a folder; point it at the output_dir of a `stage: rm` run", key=key)
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        weights = os.path.join(path, ADAPTER_WEIGHTS)
        if not os.path.isfile(weights) or _score_key(weights) is None:
            raise TuneforgeError(f"{key} `{path}` is a LoRA adapter without a score head, so it is not a reward model; "
                                 f"train one with `stage: rm` (its adapter saves the head)", key=key)
        return "lora"
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise TuneforgeError(f"{key} `{path}` holds neither adapter_config.json nor config.json; point it at the "
                             f"output_dir of a `stage: rm` run", key=key)
    with open(config, encoding="utf-8") as fh:
        conf = json.load(fh)
    archs = conf.get("architectures") or []
    labels = len(conf.get("id2label") or {}) or conf.get("num_labels", 2)
    if not any(a.endswith("ForSequenceClassification") for a in archs) or labels != 1:
        raise TuneforgeError(f"{key} `{path}` is a {', '.join(archs) or 'model'} with {labels} labels, not a reward model "
                             f"(a sequence classifier with one label); train one with `stage: rm`", key=key)
    return "full"


def _score_key(safetensors_file: str) -> str | None:
    from safetensors import safe_open

    with safe_open(safetensors_file, "pt") as fh:
        return next((k for k in fh.keys() if k.endswith(SCORE_WEIGHT)), None)


def score_head(path: str):
    """The score head's weight (1 x hidden) of a LoRA reward folder, read from its adapter file."""
    from safetensors import safe_open

    weights = os.path.join(path, ADAPTER_WEIGHTS)
    with safe_open(weights, "pt") as fh:
        return fh.get_tensor(_score_key(weights))


def check_width(path: str, hidden: int) -> None:
    """A LoRA reward folder fits a base of width `hidden` (its score head reads that many features).

    Raises:
        TuneforgeError (key reward_model): it was trained on a model of another width.
    """
    width = score_head(path).shape[-1]
    if width != hidden:
        raise TuneforgeError(f"reward_model `{path}` was trained on a model with hidden size {width}, the policy's is "
                             f"{hidden}; train the reward model on the same model_name_or_path", key="reward_model")


def load_classifier(folder: str, model_cfg, dtype):
    """AutoModelForSequenceClassification with one label from a local folder (a causal LM's checkpoint gets a new,
    seeded-random score head; TRL's helper silences the expected missing-head and unused-LM-head reports)."""
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from tuneforge.models.quantization import bnb_config

    quant = bnb_config(model_cfg, dtype)
    extra = {"quantization_config": quant} if quant is not None else {}
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, dtype=dtype, attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=model_cfg.trust_remote_code, **extra)
    model.config.use_cache = False
    return model


@dataclass
class RewardModel:
    """A loaded reward model: the classifier (full, or base + adapter and score head), its tokenizer (with the chat
    template it was trained with) and the token budget a conversation is cut to."""

    model: Any
    tokenizer: Any
    cutoff_len: int

    def score(self, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
        return score(self, conversations, batch_size)


def _base_folder(path: str, base: str | None) -> str:
    """The base model folder of a LoRA reward folder: `base` if given, else the adapter's recorded base, else the
    model of the run that trained it (tuneforge_config.yaml); an alias or GGUF resolves to its local folder."""
    from tuneforge.config.schema import ModelSection
    from tuneforge.data.cache import cache_root
    from tuneforge.models import local_folder

    if base is None:
        with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as fh:
            recorded = json.load(fh).get("base_model_name_or_path")
        base = recorded if recorded and os.path.isdir(recorded) else _trained_with(path, "model_name_or_path")
    if base is None:
        raise TuneforgeError(f"reward model `{path}`: its base model is not recorded; pass base=", key="reward_model")
    return local_folder(ModelSection(model_name_or_path=base), cache_root(None))


def _trained_with(path: str, key: str):
    """A setting of the run that saved `path` (its tuneforge_config.yaml), or None."""
    import yaml

    from tuneforge.train.artifacts import CONFIG_FILE

    conf = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(conf):
        return None
    with open(conf, encoding="utf-8") as fh:
        return (yaml.safe_load(fh) or {}).get(key)


def load_reward_model(path: str, base: str | None = None, dtype=None, cutoff_len: int | None = None) -> RewardModel:
    """Load a folder saved by `stage: rm` for scoring (eval mode, frozen).

    Args:
        path: the rm run's output_dir (a LoRA adapter with its score head, or a full classifier).
        base: for a LoRA folder, the base model (folder, .gguf or alias); default: the one it was trained on.
        dtype: torch dtype of the weights (default float32).
        cutoff_len: tokens a conversation is cut to (default: the rm run's cutoff_len, else 1024).

    Raises:
        TuneforgeError (key reward_model): not a reward folder, or its base cannot be found.
    """
    import torch

    from tuneforge.config.schema import ModelSection

    kind = reward_kind(path)
    dtype = dtype or torch.float32
    if kind == "lora":
        from peft import PeftModel

        classifier = load_classifier(_base_folder(path, base), ModelSection(), dtype)
        model = PeftModel.from_pretrained(classifier, path, is_trainable=False)
    else:
        model = load_classifier(path, ModelSection(), dtype)
    tokenizer = reward_tokenizer(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return RewardModel(model, tokenizer, cutoff_len or int(_trained_with(path, "cutoff_len") or 1024))


def reward_tokenizer(path: str):
    """The tokenizer saved with a reward folder, with the chat template the reward model was trained with."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_conversation(tokenizer, messages: list[dict], cutoff_len: int) -> list[int]:
    """Token ids of a conversation ending in the assistant reply to score, as `stage: rm` encodes a pair's side:
    the chat template on the prompt with the generation prompt, then the tokens the reply adds.

    Raises:
        ValueError: the conversation does not end with an assistant message.
    """
    from tuneforge.data.preference import encode_replies

    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a conversation to score must end with the assistant's reply")
    prompt_ids, (reply_ids,) = encode_replies(tokenizer, list(messages[:-1]), [messages[-1]["content"]], cutoff_len)
    return prompt_ids + reply_ids


def pad_right(rows: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) tensors of `rows`, padded on the right with `pad_id`."""
    import torch

    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def score(reward_model: RewardModel, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
    """One scalar per conversation (each a list of {"role", "content"} ending with the assistant's reply); higher is
    preferred."""
    import torch

    tok = reward_model.tokenizer
    rows = [encode_conversation(tok, c, reward_model.cutoff_len) for c in conversations]
    device = next(reward_model.model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_right(rows[start:start + batch_size], tok.pad_token_id)
            logits = reward_model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out += logits[:, 0].float().tolist()
    return out


def last_token_index(input_ids, pad_id: int):
    """The rightmost position that is not the pad token, per row (where a sequence classifier reads its score)."""
    import torch

    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (positions * (input_ids != pad_id)).argmax(-1)


class SharedReward:
    """The reward LoRA adapter and score head loaded onto the policy's own PeftModel (one base in memory).

    Scoring activates the reward adapter with peft's `inference_mode=True` (frozen), runs the decoder and reads the
    score at the last non-pad token, then re-activates the policy adapter: `set_adapter(policy)` makes the policy
    trainable again and keeps the reward adapter frozen, so the optimizer never sees a reward gradient.

    Args:
        peft_model: the policy (a PeftModel with its adapter active).
        path: a LoRA reward folder saved by `stage: rm`.
        tokenizer: the reward folder's tokenizer (its chat template renders the conversations).
        cutoff_len: tokens a conversation is cut to.

    Raises:
        TuneforgeError (key reward_model): the adapter does not fit the policy's base.
    """

    def __init__(self, peft_model, path: str, tokenizer, cutoff_len: int, adapter_name: str = "reward"):
        self.model, self.name, self.tokenizer, self.cutoff_len = peft_model, adapter_name, tokenizer, cutoff_len
        self.policy = peft_model.active_adapter
        base = peft_model.get_base_model()
        check_width(path, base.config.get_text_config().hidden_size)
        try:
            peft_model.load_adapter(path, adapter_name=adapter_name, is_trainable=False)
        except (ValueError, KeyError, RuntimeError) as e:
            raise TuneforgeError(f"reward_model `{path}` does not fit the policy's base ({str(e).splitlines()[0]}); train "
                                 f"the reward model on the same model_name_or_path", key="reward_model") from None
        peft_model.set_adapter(self.policy)  # the policy stays the active, trainable adapter
        self.head = score_head(path).to(device=base.device, dtype=base.dtype)  # a plain tensor: never a parameter

    def __call__(self, input_ids, attention_mask):
        """Scores (batch,) of padded sequences, without gradient."""
        import torch

        base = self.model.get_base_model()
        decoder = getattr(base, base.base_model_prefix)
        self.model.set_adapter(self.name, inference_mode=True)
        try:
            with torch.no_grad():
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        finally:
            self.model.set_adapter(self.policy)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(input_ids, self.tokenizer.pad_token_id)]
        return (last @ self.head.t())[:, 0].float()

    def score(self, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
        """One scalar per conversation, as `score()` gives for the same folder loaded on its own."""
        device = self.head.device
        rows = [encode_conversation(self.tokenizer, c, self.cutoff_len) for c in conversations]
        out: list[float] = []
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_right(rows[start:start + batch_size], self.tokenizer.pad_token_id)
            out += self(ids.to(device), mask.to(device)).tolist()
        return out
