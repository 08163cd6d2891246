"""GGUF export: the writer round-trips tiny random Llama/Mistral/Qwen 2/Qwen 3 models through transformers' GGUF loader
(f32 logits equal, q8_0 close), carries the tokenizer, chat template and generation settings, refuses what it cannot
write, and the export check catches a wrong EOS on purpose."""

import json
import os

import pytest
import torch

from tuneforge import TuneforgeError, config
from tuneforge.export import export_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11, 64, 128]])


def tiny(kind: str, tie: bool = False):
    """(random model, tokenizer) of one architecture: 2 layers, 64 wide, 4 heads, 2 KV heads."""
    import transformers

    from conftest import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[kind]
    cfg = getattr(transformers, f"{cls}Config")(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, **({"head_dim": 16} if kind == "qwen3" else {}))
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model, tok


def load_gguf(path):
    """(model, tokenizer) as transformers' GGUF loader reads the file (the head size from the file for Qwen 3)."""
    from tuneforge.export.runtimes import load_gguf_transformers

    side = load_gguf_transformers(path)
    return side.model, side.tokenizer


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.mark.parametrize("kind,tie", [("llama", False), ("llama", True), ("mistral", False), ("qwen2", False), ("qwen3", True)])
def test_f32_gguf_reads_back_with_the_same_logits(tmp_path, kind, tie):
    from tuneforge.export.gguf_writer import write_gguf

    model, tok = tiny(kind, tie)
    path = str(tmp_path / "m.gguf")
    info = write_gguf(model, tok, path, "f32")
    back, back_tok = load_gguf(path)
    assert (logits(back) - logits(model)).abs().max().item() < 1e-5
    assert set(info["tensor_types"].values()) == {"F32"} and ("output.weight" in info["tensor_types"]) != tie
    chat = [{"role": "user", "content": "hello world 12"}]
    assert back_tok.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
    assert back_tok("hello world 123 !?").input_ids == tok("hello world 123 !?").input_ids


@pytest.mark.parametrize("quant,bound", [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 2e-2), ("q5_1", 0.1), ("q4_0", 0.3)])
def test_lower_precision_ggufs_stay_close(tmp_path, quant, bound):
    from tuneforge.export.gguf_writer import write_gguf

    model, tok = tiny("llama")
    path = str(tmp_path / "m.gguf")
    info = write_gguf(model, tok, path, quant)
    back, _ = load_gguf(path)
    want = logits(model)
    err = (logits(back) - want).abs().max().item() / want.abs().max().item()
    assert 0 < err < bound, err
    assert info["tensor_types"]["blk.0.attn_norm.weight"] == "F32"
    assert info["tensor_types"]["blk.0.ffn_up.weight"] == quant.upper()


def test_gguf_metadata_carries_tokenizer_template_and_generation_settings(tmp_path):
    from gguf import GGUFReader

    from tuneforge.config.schema import GenerationSection
    from tuneforge.export.gguf_writer import write_gguf

    model, tok = tiny("llama")
    path = str(tmp_path / "m.gguf")
    write_gguf(model, tok, path, "f16", generation=GenerationSection(temperature=0.3, top_k=20))
    fields = GGUFReader(path).fields
    value = {k: f.contents() for k, f in fields.items()}
    assert value["tokenizer.chat_template"] == tok.chat_template
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "gpt-2"
    assert value["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == value["tokenizer.ggml.eot_token_id"]
    assert value["tokenizer.ggml.tokens"][tok.eos_token_id] == "<|im_end|>"
    assert value["tokenizer.ggml.token_type"][tok.eos_token_id] == 3  # control
    assert value["general.sampling.temp"] == pytest.approx(0.3) and value["general.sampling.top_k"] == 20
    assert value["general.architecture"] == "llama" and value["llama.block_count"] == 2


def test_unsupported_architectures_and_settings_are_refused_naming_them(tmp_path):
    from transformers import GPT2Config, LlamaConfig

    from tuneforge.export.gguf_writer import arch_spec

    with pytest.raises(TuneforgeError, match="this model is `gpt2`.*export_format: hf"):
        arch_spec(GPT2Config())
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256}
    with pytest.raises(TuneforgeError, match="rope_scaling `llama3`"):
        arch_spec(LlamaConfig(rope_scaling=rope, max_position_embeddings=1024))
    with pytest.raises(TuneforgeError, match="attention_bias"):
        arch_spec(LlamaConfig(attention_bias=True))


def test_a_sentencepiece_tokenizer_is_refused_naming_it():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tuneforge.export.gguf_vocab import vocab_metadata

    spm = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0, "<unk>": 1}, merges=[], byte_fallback=True,
                                                                           unk_token="<unk>")))
    with pytest.raises(TuneforgeError, match="byte fallback.*sentencepiece-style"):
        vocab_metadata(spm, 8)


def gguf_cfg(model_dir, out, **kw):
    return config.load(None, {"model_name_or_path": model_dir, "export_dir": str(out), "export_format": "gguf",
                              "export_probe_tokens": 8, **kw}, purpose="export")


def test_gguf_export_of_base_plus_adapter_checks_itself(tiny_model_dir, tmp_path):
    from test_export import make_adapter

    adapter = make_adapter(tiny_model_dir, str(tmp_path / "adapter"), False)
    out = tmp_path / "gguf"
    export_model(gguf_cfg(tiny_model_dir, out, adapter_name_or_path=adapter, gguf_quantization="f32", export_ollama=True))
    assert sorted(os.listdir(out)) == ["Modelfile", "export_report.json", "model.gguf"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and report["verdict"].startswith("OK gguf")
    gguf = report["sides"]["gguf"]
    assert gguf["greedy_answers_equal"] == "3/3" and gguf["max_logit_error"] < 1e-4 and gguf["tolerance"] == 1e-4
    assert "GGUF loader" in gguf["runtime"] or "llama.cpp" in gguf["runtime"]
    assert report["sides"]["merged"]["max_logit_error"] < 1e-4
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature" in modelfile


def test_quantized_gguf_reports_its_drift_instead_of_failing(tiny_model_dir, tmp_path):
    out = tmp_path / "q8"
    export_model(gguf_cfg(tiny_model_dir, out, gguf_quantization="q8_0"))
    report = json.loads((out / "export_report.json").read_text())
    gguf = report["sides"]["gguf"]
    assert report["passed"] and "quantized, drift measured" in report["verdict"]
    assert gguf["tolerance"] is None and 0 < gguf["max_logit_error"] < 0.1
    assert 0 <= gguf["greedy_token_agreement"] <= 1 and report["quantization"] == "q8_0"


@pytest.fixture
def wrong_eos(monkeypatch):
    """The GGUF writer puts the wrong EOS id (the pad token's) into the file."""
    from gguf import Keys

    from tuneforge.export import gguf_vocab

    real = gguf_vocab.vocab_metadata

    def broken(tokenizer, *a, **kw):
        return {**real(tokenizer, *a, **kw), Keys.Tokenizer.EOS_ID: tokenizer.pad_token_id}

    monkeypatch.setattr(gguf_vocab, "vocab_metadata", broken)


def test_a_wrong_eos_in_the_gguf_fails_the_export_naming_it(tiny_model_dir, tmp_path, wrong_eos):
    out = tmp_path / "bad"
    with pytest.raises(TuneforgeError, match=r"eos_token differs: trained `<\|im_end\|>` \(id \d+\), exported `<\|endoftext\|>`"):
        export_model(gguf_cfg(tiny_model_dir, out, gguf_quantization="f32"))
    assert not out.exists()
    report = json.loads((tmp_path / "bad.export_report.json").read_text())
    assert not report["passed"] and any("stop token ids differ" in p for p in report["problems"])


def test_export_verify_warn_keeps_a_mismatching_export_with_its_report(tiny_model_dir, tmp_path, wrong_eos):
    out = tmp_path / "kept"
    export_model(gguf_cfg(tiny_model_dir, out, gguf_quantization="f32", export_verify="warn"))
    report = json.loads((out / "export_report.json").read_text())
    assert not report["passed"] and report["verdict"].startswith("FAIL gguf: eos_token differs")


def test_export_verify_off_writes_no_report(tiny_model_dir, tmp_path):
    out = tmp_path / "off"
    export_model(gguf_cfg(tiny_model_dir, out, export_verify="off"))
    assert sorted(os.listdir(out)) == ["model.gguf"]


def test_an_unsupported_architecture_is_refused_before_anything_is_written(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import make_tokenizer

    tok = make_tokenizer()
    folder = str(tmp_path / "gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(TuneforgeError, match="this model is `gpt2`"):
        export_model(gguf_cfg(folder, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_probe_settings_are_named(tiny_model_dir, tmp_path):
    bad = tmp_path / "probes.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(TuneforgeError, match="export_probe_file .* must be a non-empty JSON list"):
        export_model(gguf_cfg(tiny_model_dir, tmp_path / "out", export_probe_file=str(bad)))
    with pytest.raises(config.ConfigError, match="export_probe_tokens must be > 0"):
        gguf_cfg(tiny_model_dir, tmp_path / "out", export_probe_tokens=0)


def test_hf_export_writes_a_passing_report(tiny_model_dir, tmp_path):
    out = tmp_path / "hf"
    export_model(config.load(None, {"model_name_or_path": tiny_model_dir, "export_dir": str(out), "export_dtype": "float32"},
                             purpose="export"))
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and report["format"] == "hf" and report["sides"]["merged"]["greedy_answers_equal"] == "3/3"


def test_llama_cpp_runs_the_f32_gguf_like_the_original(tmp_path):
    """Only where llama-cpp-python is installed: llama.cpp's own tokenizer and kernels on the written file."""
    pytest.importorskip("llama_cpp")
    from tuneforge.export.gguf_writer import write_gguf
    from tuneforge.export.runtimes import LlamaCppRuntime

    model, tok = tiny("llama")
    path = str(tmp_path / "m.gguf")
    write_gguf(model, tok, path, "f32")
    runner = LlamaCppRuntime(path, 128)
    text = tok.apply_chat_template([{"role": "user", "content": "hello world 123"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False).input_ids
    assert runner.encode(text) == ids and runner.stop_ids() == [tok.eos_token_id]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert abs(runner.logits(ids) - want).max() < 1e-5 * abs(want).max()
