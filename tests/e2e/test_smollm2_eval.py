"""End to end on the real SmolLM2-135M-Instruct: multiple-choice evaluation is deterministic, and LoRA on the
Marrowick training split (data/marrowick_train.jsonl, facts of a made-up country the model cannot know) raises its accuracy on the
held-out questions of data/eval/marrowick, measured before and after by `eval_before_after` in the recipe."""

import json
import os

import pytest

from tuneforge.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e


def accuracy(folder: str) -> dict:
    with open(os.path.join(folder, "results.json")) as fh:
        task = json.load(fh)["results"]["choice"][0]
    return task


def test_evaluation_gives_the_same_numbers_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = []
    for name in ("one", "two"):
        out = str(tmp_path / name)
        assert main(["eval", "examples/eval/eval_mmlu_layout.yaml", f"save_dir={out}"]) == 0
        runs.append(accuracy(out))
    assert runs[0] == runs[1]
    assert runs[0]["questions"] == 20 and len(runs[0]["predictions"]) == 20


def test_lora_on_the_training_split_raises_held_out_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    # fp32 on every host: `auto` picks bf16 on AMX CPUs, and 20 questions after 48 steps swing with any change of the
    # numbers (4 seeds: 45-65% in fp32, 30-55% in bf16; the bf16 adapters scored as well in fp32: precision.py)
    assert main(["train", "examples/marrowick_lora_pt.yaml", f"output_dir={out}", "disable_tqdm=true",
                 "torch_dtype=float32"]) == 0
    before, after = accuracy(str(out / "eval_before")), accuracy(str(out / "eval_after"))
    print(f"marrowick_test accuracy: before {before['accuracy']} after {after['accuracy']}")
    # measured: 30.0 before (the base model guesses), 65.0 after 48 steps (2 CPU cores, fp32)
    assert before["accuracy"] <= 40.0, before
    assert after["accuracy"] >= before["accuracy"] + 20.0, (before, after)
    assert "marrowick_test accuracy" in capsys.readouterr().out
