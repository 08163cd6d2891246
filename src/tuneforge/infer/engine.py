"""ChatEngine: one loaded model (base + optional adapter) that answers conversations, whole or streamed.
The CLI chat, the API server and the Board all use it. Generation is serialized by a lock, so concurrent
callers queue instead of mixing outputs."""

import threading
from dataclasses import dataclass, field, replace
from typing import Iterator


@dataclass
class GenerationSettings:
    """Per-request decoding settings; temperature 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @classmethod
    def from_section(cls, gen) -> "GenerationSettings":
        return cls(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k, max_new_tokens=gen.max_new_tokens,
                   repetition_penalty=gen.repetition_penalty)

    def with_(self, **kw) -> "GenerationSettings":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class ChatEngine:
    """Generate replies with the chat template the model was trained with."""

    def __init__(self, model, tokenizer, name: str = "tuneforge", default_system: str | None = None,
                 settings: GenerationSettings | None = None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.default_system = default_system
        self.settings = settings or GenerationSettings()
        self.lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg, name: str | None = None) -> "ChatEngine":
        """Load `cfg.model` (+ its adapter) as training does (torch_dtype, quantization_bit, trust_remote_code) with
        the saved or configured template."""
        import os

        from tuneforge.infer.generate import load_for_inference

        model, tok = load_for_inference(cfg.model, template=cfg.data.template, train_args=cfg.train.args)
        name = name or os.path.basename(os.path.normpath(cfg.model.adapter_name_or_path or cfg.model.model_name_or_path))
        return cls(model, tok, name, cfg.generation.default_system, GenerationSettings.from_section(cfg.generation))

    def prompt_ids(self, messages: list[dict]):
        if self.default_system and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return enc["input_ids"].to(self.model.device)

    def _generate_kwargs(self, ids, s: GenerationSettings) -> dict:
        import torch

        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": s.max_new_tokens,
              "repetition_penalty": s.repetition_penalty, "pad_token_id": self.tokenizer.pad_token_id,
              "eos_token_id": self.tokenizer.eos_token_id}
        if s.temperature > 0:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop:
            kw.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        return kw

    def chat(self, messages: list[dict], settings: GenerationSettings | None = None) -> Reply:
        """The whole reply to a conversation."""
        import torch

        s = settings or self.settings
        ids = self.prompt_ids(messages)
        with self.lock, torch.no_grad():
            if s.seed is not None:
                torch.manual_seed(s.seed)
            out = self.model.generate(**self._generate_kwargs(ids, s))
        new = out[0, ids.shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, s.stop)
        ended = len(new) > 0 and int(new[-1]) == self.tokenizer.eos_token_id
        finish = "stop" if stopped or ended or len(new) < s.max_new_tokens else "length"
        return Reply(text, ids.shape[1], len(new), finish)

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None, usage: dict | None = None) -> Iterator[str]:
        """Yield the reply in pieces as it is generated. `usage`, if given, receives the Reply fields at the end.

        Closing the iterator early (a client that hangs up, a stop string) stops generation too.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        s = settings or self.settings
        ids = self.prompt_ids(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel, result = threading.Event(), {}

        def work():  # holds the lock only while generating, so a consumer that goes away cannot block others
            try:
                with self.lock, torch.no_grad():
                    if s.seed is not None:
                        torch.manual_seed(s.seed)
                    result["out"] = self.model.generate(**self._generate_kwargs(ids, s), streamer=streamer,
                                                        stopping_criteria=StoppingCriteriaList([_Cancelled()]))
            except Exception as e:  # surfaced to the consumer below
                result["error"] = e
                streamer.end()

        text, stopped = "", False
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            for piece in streamer:
                before = text
                text, stopped = _cut_at_stop(text + piece, s.stop)
                if text != before:
                    yield text[len(before):]
                if stopped:
                    break
        finally:
            cancel.set()  # stops generation early; the streamer's queue is unbounded, so the worker never blocks
            thread.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, ids.shape[1]:]
        ended = len(new) > 0 and int(new[-1]) == self.tokenizer.eos_token_id
        if usage is not None:
            usage.update(text=text, prompt_tokens=ids.shape[1], completion_tokens=len(new),
                         finish_reason="stop" if stopped or ended or len(new) < s.max_new_tokens else "length")
