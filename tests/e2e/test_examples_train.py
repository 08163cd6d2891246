"""Every recipe in examples/ trains as shipped on the real SmolLM2-135M-Instruct: two logged optimizer steps with
finite losses, the weights its method saves, and the run's results. Only what keeps a run short is overridden."""

import glob
import json
import math
import os
import time

import pytest

from tuneforge.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e

# Two logged steps and nothing saved on the way; the method, its section, the data and the batch stay as shipped.
# logging_nan_inf_filter=false: by default the Trainer logs a NaN/inf step as the window's mean of the finite
# ones (0 when none is), which would hide a diverged run from the finiteness check.
SHORT = ["max_steps=2", "logging_steps=1", "save_strategy=no", "disable_tqdm=true", "logging_nan_inf_filter=false"]
ADAPTER, MODEL = "adapter_model.safetensors", "model.safetensors"

RECIPES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "examples", "*.yaml")))
# recipes that read another recipe's output: recipe -> (the recipe trained first, the key that names its output)
NEEDS = {"ppo_lora.yaml": ("rm_lora.yaml", "reward_model")}


def weights_of(recipe: str) -> str:
    """The weights file the recipe's method saves, from the method registry: an adapter, or the whole model."""
    from tuneforge import config, methods

    cfg = config.load(os.path.join(ROOT, "examples", recipe), purpose="infer")
    return ADAPTER if methods.get(cfg.method.finetuning_type).adapter else MODEL


def test_every_recipe_is_found():
    assert len(RECIPES) >= 9 and "quickstart_lora_sft.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = str(tmp_path / "run")
    start = time.perf_counter()
    given = []
    if recipe in NEEDS:
        first, key = NEEDS[recipe]
        assert main(["train", f"examples/{first}", f"output_dir={tmp_path / 'first'}", *SHORT]) == 0
        given = [f"{key}={tmp_path / 'first'}"]
    rc = main(["train", f"examples/{recipe}", f"output_dir={out}", *SHORT, *given])
    print(f"{recipe}: {time.perf_counter() - start:.1f}s")
    assert rc == 0
    saved = sorted(os.listdir(out))
    weights = weights_of(recipe)
    other = MODEL if weights == ADAPTER else ADAPTER
    assert weights in saved and os.path.getsize(os.path.join(out, weights)) > 0, saved
    assert other not in saved, f"{recipe} saved {other} besides {weights}"
    assert "all_results.json" in saved, saved
    with open(os.path.join(out, "all_results.json")) as fh:
        results = json.load(fh)
    assert math.isfinite(results["train_loss"]), results
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        logged = [json.loads(line) for line in fh if line.strip()]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert [step for step, _ in losses] == [1, 2], logged
    assert all(math.isfinite(loss) for _, loss in losses), losses
