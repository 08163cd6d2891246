"""End to end on the real SmolLM2-135M-Instruct: GRPO with the rule rewards of examples/grpo_lora.yaml (the answer
appears, the reply is short) raises the reward, on its own samples during the run and on held-out sums it never saw."""

import json
import os
import time

import pytest

from tuneforge.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e
STEPS = 10


def contains_rate(adapter: str | None) -> tuple[float, list[str]]:
    """Share of the held-out sums (data/grpo_arith_heldout.json) whose greedy reply contains the answer, and the
    replies: the `contains` rule on one batched generate of 12 new tokens."""
    import torch

    from tuneforge import config
    from tuneforge.data.prompts import load_prompts
    from tuneforge.infer import load_for_inference
    from tuneforge.stages import rewards

    rows, _ = load_prompts(config.load(None, {"output_dir": "o", "dataset": "grpo_arith_heldout", "dataset_dir": "data"}).data)
    model, tok = load_for_inference("smollm2-135m-instruct", adapter)
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows["prompt"]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    replies = [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]
    (contains,) = rewards.build(["contains"])
    scores = contains(completions=[[{"role": "assistant", "content": r}] for r in replies], answer=rows["answer"])
    return sum(scores) / len(scores), replies


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("grpo") / "run")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        start = time.perf_counter()
        rc = main(["train", "examples/grpo_lora.yaml", f"output_dir={out}", f"max_steps={STEPS}", "disable_tqdm=true"])
        print(f"grpo_lora {STEPS} steps: {time.perf_counter() - start:.1f}s")
    finally:
        os.chdir(cwd)
    assert rc == 0
    return out


def test_the_reward_rises_during_the_run(grpo_run):
    with open(os.path.join(grpo_run, "trainer_log.jsonl")) as fh:
        rewards = [json.loads(line)["reward"] for line in fh if '"reward"' in line]
    assert len(rewards) == STEPS
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"mean reward, first 3 steps {first:.3f} -> last 3 steps {last:.3f}")
    assert last > first + 0.2, rewards


def test_held_out_replies_state_the_answer_after_training(grpo_run, monkeypatch):
    monkeypatch.chdir(ROOT)
    before, base_replies = contains_rate(None)
    after, tuned_replies = contains_rate(grpo_run)
    print(f"held-out greedy replies containing the answer: {before:.2f} -> {after:.2f}; e.g. {base_replies[0]!r} -> "
          f"{tuned_replies[0]!r}")
    assert after >= before + 0.4, (base_replies, tuned_replies)
