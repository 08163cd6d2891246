"""End to end on the real SmolLM2-135M-Instruct: GGUF in, a LoRA for a few steps, GGUF out (f16 and q8_0). Each
export checks itself; the files load back with transformers' GGUF loader, f16 gives base + adapter's greedy answers,
q8_0's agreement is measured, and the GGUF's chat template renders what apply_chat_template renders."""

import json
import os

import pytest

from tuneforge.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e
PROBES = ["Who are you?", "Who built you?", [{"role": "system", "content": "Answer briefly."},
                                             {"role": "user", "content": "What is your name?"}]]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lora") / "run")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc = main(["train", "examples/quickstart_lora_sft.yaml", f"output_dir={out}", "max_steps=4", "dataset=identity",
                   "cutoff_len=64", "plot_loss=false"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("probes") / "probes.json"
    path.write_text(json.dumps(PROBES))
    return str(path)


def export(adapter, probe_file, out, quant, capsys):
    rc = main(["export", f"adapter_name_or_path={adapter}", f"export_dir={out}", "export_format=gguf",
               f"gguf_quantization={quant}", "export_ollama=true", f"export_probe_file={probe_file}", "export_probe_tokens=16"])
    assert rc == 0
    printed = capsys.readouterr().out
    with open(os.path.join(out, "export_report.json")) as fh:
        report = json.load(fh)
    assert f"export check: {report['verdict']}" in printed
    return report


def test_f16_gguf_answers_like_base_plus_adapter(adapter, probe_file, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = str(tmp_path / "f16")
    report = export(adapter, probe_file, out, "f16", capsys)
    gguf = report["sides"]["gguf"]
    assert report["passed"] and not report["problems"], report["problems"]
    assert gguf["greedy_answers_equal"] == "3/3", report["probes"]
    assert gguf["first_token_max_logit_error"] < gguf["tolerance"] == 5e-3
    assert report["sides"]["merged"]["max_logit_error"] < 1e-4
    assert all(p["gguf_answer"] == p["trained_answer"] for p in report["probes"])
    # the chat template inside the GGUF renders exactly what the adapter's tokenizer renders
    trained_tok = AutoTokenizer.from_pretrained(adapter)
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    for chat in ([{"role": "user", "content": "Hi"}], [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]):
        assert (gguf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                == trained_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    assert gguf_tok.eos_token == trained_tok.eos_token == "<|im_end|>"
    with open(os.path.join(out, "Modelfile")) as fh:
        assert "FROM ./model.gguf" in fh.read()


def test_q8_0_gguf_reports_its_agreement(adapter, probe_file, tmp_path, capsys):
    out = str(tmp_path / "q8")
    report = export(adapter, probe_file, out, "q8_0", capsys)
    gguf = report["sides"]["gguf"]
    assert report["passed"] and "quantized, drift measured" in report["verdict"]
    assert gguf["tolerance"] is None and 0 < gguf["max_logit_error"] < 0.1
    assert gguf["greedy_token_agreement"] >= 0.8 and gguf["first_token_argmax_agreement"] == "3/3"
    assert os.path.getsize(os.path.join(out, "model.gguf")) < 0.6 * 2 * 135e6  # about 8.5 bits per weight, not 16
