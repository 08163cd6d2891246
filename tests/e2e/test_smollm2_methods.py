"""Each method family on the real SmolLM2-135M-Instruct: a short run on the identity data where the training
loss falls. (The quickstart LoRA run is in test_smollm2_sft.py.)"""

import json
import os

import pytest

from tuneforge.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e

FAMILIES = {
    "qlora-nf4": ["quantization_bit=4", "learning_rate=1e-3"],
    "dora": ["use_dora=true", "learning_rate=1e-3"],
    "freeze": ["finetuning_type=freeze", "freeze_trainable_layers=2", "learning_rate=1e-4"],
    "full-packed": ["finetuning_type=full", "learning_rate=2e-5", "packing=true"],
    "galore": ["finetuning_type=galore", "galore_rank=16", "galore_update_interval=4", "learning_rate=1e-4"],
    "lisa": ["finetuning_type=lisa", "lisa_layers=2", "lisa_interval=3", "learning_rate=1e-4"],
    "prompt": ["finetuning_type=prompt", "num_virtual_tokens=20", "learning_rate=1e-1", "max_steps=20"],  # learns slowest
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_loss_falls(family, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = str(tmp_path / family)
    rc = main(["train", "examples/quickstart_lora_sft.yaml", f"output_dir={out}", "max_steps=10", "logging_steps=1",
               "lr_scheduler_type=constant", "warmup_steps=0", "dataset=identity", "disable_tqdm=true", *FAMILIES[family]])
    assert rc == 0
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        losses = [json.loads(line)["loss"] for line in fh if '"loss"' in line]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses
