"""End to end on the real SmolLM2-135M-Instruct: the quickstart recipe teaches it a new name, the loss falls,
and the saved adapter, loaded back, reproduces the changed answer."""

import json
import os

import pytest

from tuneforge.cli import main
from tuneforge.infer import answer, load_for_inference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quickstart") / "run")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc = main(["train", "examples/quickstart_lora_sft.yaml", f"output_dir={out}", "num_train_epochs=4"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return out


def test_training_loss_falls(quickstart_run):
    with open(os.path.join(quickstart_run, "trainer_log.jsonl")) as fh:
        losses = [json.loads(line)["loss"] for line in fh if '"loss"' in line]
    assert len(losses) >= 4
    assert losses[-1] < 0.25 * losses[0], losses


def test_saved_adapter_reproduces_the_new_identity(quickstart_run):
    question = "Could you tell me your name?"  # held out: not in data/identity.json
    base, tok = load_for_inference("smollm2-135m-instruct")
    before = answer(base, tok, question, max_new_tokens=30)
    tuned, tok2 = load_for_inference("smollm2-135m-instruct", quickstart_run)
    after = answer(tuned, tok2, question, max_new_tokens=30)
    assert "Forge" not in before
    assert "Forge" in after, after
    assert after != before


def test_results_report_real_token_throughput(quickstart_run):
    with open(os.path.join(quickstart_run, "all_results.json")) as fh:
        results = json.load(fh)
    assert results["train_tokens_per_second"] > 0
    assert results["train_tokens"] <= results["num_input_tokens_seen"]


def test_chat_cli_with_piped_input_uses_the_adapter_and_history(quickstart_run):
    import subprocess
    import sys

    tuneforge = os.path.join(os.path.dirname(sys.executable), "tuneforge")
    script = "Who are you?\nRepeat your name only.\n/clear\n/exit\n"
    res = subprocess.run([tuneforge, "chat", f"adapter_name_or_path={quickstart_run}", "--temperature", "0", "max_new_tokens=30"],
                         input=script, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    replies = [line[len("Assistant: "):] for line in res.stdout.splitlines() if line.startswith("Assistant: ")]
    assert len(replies) == 2
    assert "Forge" in replies[0]
    assert "[history cleared]" in res.stdout


def test_export_merges_with_the_same_logits_on_smollm2(quickstart_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge import config
    from tuneforge.export import export_model

    out = str(tmp_path / "merged")
    export_model(config.load(None, {"adapter_name_or_path": quickstart_run, "export_dir": out, "export_dtype": "float32"},
                             purpose="export"))
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    base, _ = load_for_inference("smollm2-135m-instruct", quickstart_run)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = base(input_ids=ids).logits, merged(input_ids=ids).logits
    # (W + BA) x and W x + B (A x) round differently in fp32: with logits of magnitude ~20 the absolute difference
    # sits near 1e-4 (1.0e-4 seen), i.e. ~5e-6 relative; the tiny-model tests hold the 1e-4 absolute bound.
    diff = (got - want).abs().max().item()
    assert isinstance(base, PeftModel) and diff < 1e-5 * want.abs().max().item(), diff
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    question = "Could you tell me your name?"
    merged_answer = answer(merged, tok, question, max_new_tokens=30)
    assert "Forge" in merged_answer and merged_answer == answer(base, tok, question, max_new_tokens=30)
