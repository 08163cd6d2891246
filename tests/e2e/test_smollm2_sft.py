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
