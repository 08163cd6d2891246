"""Shared fixtures: a tiny byte-level BPE tokenizer with a chat template, a tiny random Llama saved as a
HF folder, dataset folders written per test, and (for e2e tests) the real SmolLM2 converted once."""

import json
import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "Who are you? I am Forge, an assistant built by the Tuneforge Lab.",
    "What is the capital of France? The capital of France is Paris.",
    "system user assistant hello world a b c d e f g 0 1 2 3 4 5 6 7 8 9 .,!?",
    "### Instruction: ### Response: ### Input: translate summarize answer question",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]


def make_tokenizer(chat_template: str | None = "chatml"):
    """A byte-level BPE tokenizer (covers any text) with chatml special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tuneforge.data.templates import NAMED

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|begin_of_text|>")
    if chat_template:
        fast.chat_template = NAMED.get(chat_template, chat_template)
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


def make_model_dir(folder, layers=2, hidden=32, intermediate=64, tie=False) -> str:
    """A random Llama (GQA: 4 heads, 2 KV heads) with the tiny tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-wide random Llama."""
    return make_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def wide_model_dir(tmp_path_factory):
    """A 6-layer, 64-wide random Llama: enough layers for LISA, big enough matrices for 4-bit and 8-bit paths."""
    return make_model_dir(tmp_path_factory.mktemp("wide-llama"), layers=6, hidden=64, intermediate=256)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    return path


ALPACA_ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forge."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Red.", "system": "Be brief.",
     "history": [["hello", "hello there"]]},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
]


@pytest.fixture
def data_dir(tmp_path):
    """A LLaMA-Factory-style dataset folder with an alpaca and a sharegpt dataset."""
    d = tmp_path / "data"
    write_json(str(d / "alpaca.json"), ALPACA_ROWS * 4)
    write_json(str(d / "chat.json"), [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}] * 8)
    write_json(str(d / "dataset_info.json"), {
        "my_alpaca": {"file_name": "alpaca.json", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                               "system": "system", "history": "history"}},
        "my_chat": {"file_name": "chat.json", "formatting": "sharegpt"},
    })
    return str(d)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct as a HF folder (GGUF converted once into the tuneforge cache)."""
    from tuneforge.data.cache import cache_root
    from tuneforge.models import local_folder
    from tuneforge.config.schema import ModelSection

    return local_folder(ModelSection(), cache_root(None))


def wait_for(fn, timeout=30.0, every=0.05):
    """Poll `fn` until it returns something truthy (returned), or fail after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")
