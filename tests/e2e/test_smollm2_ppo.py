"""End to end on the real SmolLM2-135M-Instruct: PPO with the model-shared LoRA reward (examples/ppo_lora.yaml as it
is, on the reward model examples/rm_lora.yaml trains) raises the mean reward of its replies over its steps and of its
greedy replies to held-out prompts, with one copy of the base in memory: one causal LM and no second model alive,
every parameter storage counted once, and the run's peak RSS above the process baseline within the estimate that
counts no reference or reward copy (a second copy of the base would add 0.5 GiB)."""

import json
import os
import subprocess
import sys
import time

import pytest

from tuneforge import config, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.e2e
GIB = 2**30


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rm") / "run")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        run.train(config.load("examples/rm_lora.yaml", [f"output_dir={out}", "disable_tqdm=true"]))
    finally:
        os.chdir(cwd)
    return out


def unique_parameter_values(*modules) -> int:
    """Values held by the distinct parameter storages of `modules` (a storage shared by several counts once)."""
    seen = {}
    for module in modules:
        for p in module.parameters():
            seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes() // p.element_size()
    return sum(seen.values())


def _status(key: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in bytes."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


def worker(out: str, reward: str) -> None:
    """The PPO run in a fresh process (see ppo_run); prints one JSON line of facts."""
    import gc

    import peft  # noqa: F401  everything imported before the baseline, as benchmarks/estimator_accuracy.py measures
    import trl  # noqa: F401
    from transformers import PreTrainedModel

    from tuneforge.memory.shapes import load_shape
    from tuneforge.run.memory_check import estimate_for, largest_batch

    baseline = _status("VmRSS")
    prepared = run.build(config.load("examples/ppo_lora.yaml", [f"output_dir={out}", f"reward_model={reward}", "disable_tqdm=true"]))
    trainer = prepared.trainer
    base = trainer.model.get_base_model()
    report, _ = estimate_for(prepared.cfg, load_shape(base.config._name_or_path), largest_batch(prepared.cfg, prepared.stats))
    gc.collect()
    facts = {"models": [type(o).__name__ for o in gc.get_objects() if isinstance(o, PreTrainedModel)],
             "values": unique_parameter_values(trainer.model, trainer.value_head),
             "base": base.num_parameters() - sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n),
             "base_bytes": sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" not in n),
             "estimate": report.total, "built": _status("VmHWM") - baseline, "eval_before": trainer.evaluate()["eval_reward"]}
    facts["evaluated"] = _status("VmHWM") - baseline
    facts["metrics"] = run.train_and_save(prepared)
    facts["above_baseline"] = _status("VmHWM") - baseline
    print("FACTS " + json.dumps(facts))


@pytest.fixture(scope="module")
def ppo_run(reward_dir, tmp_path_factory):
    """The recipe as it is, in a fresh process with glibc's mmap threshold fixed, as benchmarks/estimator_accuracy.py
    runs (otherwise freed tensors stay in the heap and the peak varies by ~0.5 GiB). The peak is VmHWM, which exec
    resets; getrusage's ru_maxrss would still hold this pytest process's size from the fork."""
    out = str(tmp_path_factory.mktemp("ppo") / "run")
    start = time.perf_counter()
    code = f"import sys; sys.path[:0] = [{HERE!r}]; import test_smollm2_ppo as t; t.worker({out!r}, {reward_dir!r})"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert res.returncode == 0, res.stderr[-3000:]
    facts = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("FACTS "))[6:])
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        facts["steps"] = [json.loads(line)["reward"] for line in fh if '"reward"' in line]
    print(f"ppo: step rewards {[round(r, 2) for r in facts['steps']]}; held-out greedy reward {facts['eval_before']:.2f} -> "
          f"{facts['metrics']['eval_reward']:.2f}; peak RSS above baseline {facts['above_baseline'] / GIB:.2f} GiB, estimate "
          f"{facts['estimate'] / GIB:.2f} GiB; {time.perf_counter() - start:.1f}s")
    return facts


def test_mean_reward_rises_over_the_steps_and_on_held_out_prompts(ppo_run):
    rewards = ppo_run["steps"]
    assert len(rewards) == 10
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 1.0, rewards
    assert ppo_run["metrics"]["eval_reward"] > ppo_run["eval_before"] + 1.0, ppo_run


def test_one_copy_of_the_base_is_in_memory(ppo_run):
    facts = ppo_run
    assert facts["models"].count("LlamaForCausalLM") == 1 and not any("Classification" in m for m in facts["models"])
    # the policy and reward adapters and the value head add ~3.6% to the base's ~135M values; a second copy, 100%
    assert facts["values"] < 1.05 * facts["base"], facts
    # measured 1.50 GiB against an estimate of 1.50 GiB; a second copy of the base would add base_bytes (0.50 GiB)
    assert facts["above_baseline"] < facts["estimate"] + 0.3 * facts["base_bytes"], facts


# LLaMA-Factory's examples/train_lora/llama3_lora_{reward,ppo}.yaml with the model (and its template) and the datasets
# changed to ours; bf16 and the loader workers as in examples/llamafactory_lora_sft.yaml (this is a CPU).
LLAMAFACTORY_RM = """
model_name_or_path: smollm2-135m-instruct
trust_remote_code: true
stage: rm
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
dataset: instruction_pairs
template: smollm2
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 0
output_dir: {out}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
resume_from_checkpoint: null
"""
LLAMAFACTORY_PPO = """
model_name_or_path: smollm2-135m-instruct
reward_model: {reward}
trust_remote_code: true
stage: ppo
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
dataset: instruction_prompts
template: smollm2
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 0
output_dir: {out}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
report_to: none
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-5
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
max_new_tokens: 512
top_k: 0
top_p: 0.9
"""


def test_llamafactory_rm_and_ppo_yamls_run(tmp_path, monkeypatch):
    """Two steps each (and 16 new tokens: 512 is for a GPU), as tests/e2e/test_examples_train.py shortens recipes."""
    from tuneforge.cli import main

    monkeypatch.chdir(ROOT)
    short = ["max_steps=2", "logging_steps=1", "disable_tqdm=true"]
    rm, ppo = tmp_path / "rm", tmp_path / "ppo"
    (tmp_path / "rm.yaml").write_text(LLAMAFACTORY_RM.format(out=rm))
    (tmp_path / "ppo.yaml").write_text(LLAMAFACTORY_PPO.format(out=ppo, reward=rm))
    assert main(["train", str(tmp_path / "rm.yaml"), *short]) == 0
    assert main(["train", str(tmp_path / "ppo.yaml"), *short, "max_new_tokens=16"]) == 0
    with open(ppo / "trainer_log.jsonl") as fh:
        assert [json.loads(line)["step"] for line in fh if '"reward"' in line] == [1, 2]
    assert os.path.isfile(ppo / "adapter_model.safetensors")
