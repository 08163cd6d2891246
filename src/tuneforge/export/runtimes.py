"""The models an export check runs the probe chats through: a transformers model (the trained base + adapter, the
merged folder, a GGUF read by transformers' GGUF loader) or a GGUF run by llama.cpp (llama-cpp-python, optional).

Each gives the same four things: logits for a token sequence, a greedy continuation, its tokenizer facts (special
tokens, chat template, how it encodes text) and a name for the report."""

import importlib.util
import os

import numpy as np

SPECIALS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TransformersRuntime:
    """A transformers causal LM with its own tokenizer, run in float32 on the CPU."""

    def __init__(self, model, tokenizer, runtime: str):
        self.model, self.tokenizer, self.runtime = model, tokenizer, runtime

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0]
        return out.float().cpu().numpy()

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        import torch

        stop = self.stop_ids()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (stop or [0])[0]
        with torch.no_grad():
            out = self.model.generate(input_ids=torch.tensor([ids], device=self.model.device), do_sample=False,
                                      max_new_tokens=max_new_tokens, eos_token_id=stop or None, pad_token_id=pad,
                                      attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.model.device))
        return _cut_at_stop(out[0, len(ids):].tolist(), stop)

    def stop_ids(self) -> list[int]:
        from tuneforge.export.gguf_vocab import end_of_turn_token

        tok = self.tokenizer
        eot = end_of_turn_token(tok)
        return sorted({i for i in (tok.eos_token_id, eot and tok.convert_tokens_to_ids(eot)) if i is not None})

    def specials(self) -> dict:
        tok = self.tokenizer
        return {name: (getattr(tok, name), getattr(tok, f"{name}_id")) for name in SPECIALS}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids


class LlamaCppRuntime:
    """A GGUF run by llama.cpp through llama-cpp-python: its own tokenizer, its own kernels."""

    def __init__(self, path: str, n_ctx: int):
        import llama_cpp

        f32 = llama_cpp.GGML_TYPE_F32  # a float32 KV cache (llama.cpp's default is f16), so the file is what is measured
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False, type_k=f32, type_v=f32,
                                   n_threads=max(1, min(4, os.cpu_count() or 1)))
        self.runtime = f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        stop = set(self.stop_ids())
        self.llm.reset()
        self.llm.eval(ids)
        out = []
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            if nxt in stop:
                break
            out.append(nxt)
            self.llm.eval([nxt])
        return out

    def stop_ids(self) -> list[int]:
        meta = self.llm.metadata
        return sorted({int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta})

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _cut_at_stop(ids: list[int], stop: list[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i]
    return ids


def load_hf_folder(folder: str, trust_remote_code: bool) -> TransformersRuntime:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust_remote_code).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return TransformersRuntime(model, tok, "transformers (the merged folder reloaded)")


def gguf_metadata(path: str) -> dict:
    """The GGUF's metadata with arrays (token list, merges) left as their lengths. transformers' header reader does
    this in milliseconds; gguf's GGUFReader, the fallback, parses every token in Python (seconds for a 49k vocabulary)."""
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:
        from gguf import GGUFReader

        return {k: f.contents() if len(f.types) == 1 else len(f.data) for k, f in GGUFReader(path).fields.items()}
    return read_gguf_metadata(path)[0]


def load_gguf_transformers(path: str) -> TransformersRuntime:
    """The GGUF read back by transformers' GGUF loader (dequantized to float32). The config comes from the file;
    for Qwen 3 the head size is set from the file's `attention.key_length`, which that loader does not read (it
    would keep Qwen3Config's default of 128)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(path))
    meta = gguf_metadata(path)
    kwargs = {}
    if meta["general.architecture"] == "qwen3" and "qwen3.attention.key_length" in meta:
        kwargs["config"] = AutoConfig.from_pretrained(folder, gguf_file=name, head_dim=int(meta["qwen3.attention.key_length"]))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **kwargs).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return TransformersRuntime(model, tok, f"transformers {transformers.__version__} GGUF loader (llama-cpp-python not installed)")
