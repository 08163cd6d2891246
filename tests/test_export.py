"""Merged export: logits equal base + adapter (LoRA and DoRA), the folder loads with plain transformers,
shards follow export_size, dtype follows export_dtype, nothing is overwritten by accident."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tuneforge import TuneforgeError, config
from tuneforge.export import export_model


def make_adapter(tiny_model_dir, folder, use_dora: bool):
    """A LoRA/DoRA adapter with non-zero B, so merging really changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=use_dora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11, 64, 128]])


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merged_logits_equal_base_plus_adapter(tiny_model_dir, tmp_path, use_dora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_model_dir, str(tmp_path / "adapter"), use_dora)
    cfg = config.load(None, {"model_name_or_path": tiny_model_dir, "adapter_name_or_path": adapter,
                             "export_dir": str(tmp_path / "merged"), "export_dtype": "float32"}, purpose="export")
    export_model(cfg)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    diff = (logits_of(merged, IDS) - logits_of(with_adapter, IDS)).abs().max().item()
    assert diff < 1e-4, diff
    assert (logits_of(merged, IDS) - logits_of(plain, IDS)).abs().max().item() > 1e-3  # the adapter did change the model


def test_merged_folder_loads_without_tuneforge_and_keeps_the_template(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, str(tmp_path / "adapter"), False)
    out = str(tmp_path / "merged")
    export_model(config.load(None, {"model_name_or_path": tiny_model_dir, "adapter_name_or_path": adapter, "export_dir": out},
                             purpose="export"))
    code = ("import sys; sys.modules['tuneforge'] = None\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({out!r}); t = AutoTokenizer.from_pretrained({out!r})\n"
            "print(m.dtype, bool(t.chat_template), 'peft' in str(type(m)).lower())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["torch.bfloat16", "True", "False"]


def test_export_size_shards_and_dtype(tiny_model_dir, tmp_path):
    out = str(tmp_path / "sharded")
    export_model(config.load(None, {"model_name_or_path": tiny_model_dir, "export_dir": out, "export_size": 0.00002,
                                    "export_dtype": "float16"}, purpose="export"))
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(shards) > 1 and os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    assert all(os.path.getsize(os.path.join(out, f)) < 40_000 for f in shards)
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "float16"


def test_existing_export_dir_is_not_overwritten(tiny_model_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    cfg = config.load(None, {"model_name_or_path": tiny_model_dir, "export_dir": str(out)}, purpose="export")
    with pytest.raises(TuneforgeError, match="is not empty; choose a new export_dir, or set export_overwrite"):
        export_model(cfg)
    assert (out / "mine.txt").read_text() == "keep me"


def test_export_needs_export_dir():
    with pytest.raises(config.ConfigError, match="export_dir is missing"):
        config.load(None, {}, purpose="export")


def test_ollama_modelfile_reproduces_the_chat_template(tiny_model_dir, tmp_path):
    out = str(tmp_path / "ollama")
    export_model(config.load(None, {"model_name_or_path": tiny_model_dir, "export_dir": out, "export_ollama": True},
                             purpose="export"))
    text = open(os.path.join(out, "Modelfile")).read()
    assert text.splitlines()[1] == "FROM ."
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' in text
    assert '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_modelfile_without_turn_wrappers_says_so():
    from conftest import make_tokenizer
    from tuneforge.export import ollama_modelfile

    tok = make_tokenizer("{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}X{% endif %}{% endfor %}")
    assert "write TEMPLATE by hand" in ollama_modelfile(tok)


def test_prompt_tuning_adapters_are_refused_with_the_reason(tiny_model_dir, tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(tmp_path / "prompt")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    cfg = config.load(None, {"model_name_or_path": tiny_model_dir, "adapter_name_or_path": folder,
                             "export_dir": str(tmp_path / "out")}, purpose="export")
    with pytest.raises(TuneforgeError, match="cannot be merged; serve it with --adapter"):
        export_model(cfg)
    assert not os.path.exists(tmp_path / "out")
