"""Stage grpo on a tiny random Llama: TRL's keys reach GRPOTrainer, a LoRA run trains and saves only its adapter, the
reference is an adapter copy (LoRA) or a base copy from the same folder (full), every variant takes a step, bad
settings are refused before any model loads, and the estimator counts generation buffers and references."""

import json
import os

import pytest
import torch

from conftest import write_json
from tuneforge import TuneforgeError, config, run

REWARD_PY = '''
def characters(completions, **kwargs):
    """Longer completions score higher: random tiny models still give groups with different rewards."""
    return [float(len(c[0]["content"])) for c in completions]
'''


@pytest.fixture
def grpo_dir(tmp_path):
    d = tmp_path / "data"
    sums = [{"instruction": f"What is {a} + {b}?", "output": str(a + b)} for a in range(4) for b in range(4)]
    write_json(str(d / "sums.json"), sums)
    write_json(str(d / "dataset_info.json"), {"sums": {"file_name": "sums.json"}})
    (tmp_path / "my_rewards.py").write_text(REWARD_PY)
    return tmp_path


def flat(tmp, model_dir, **kw):
    return {"model_name_or_path": model_dir, "dataset": "sums", "dataset_dir": str(tmp / "data"), "template": "chatml",
            "output_dir": str(tmp / "out"), "stage": "grpo", "finetuning_type": "lora", "cutoff_len": 64,
            "reward_funcs": [f"{tmp}/my_rewards.py:characters", "contains"], "num_generations": 4,
            "per_device_train_batch_size": 4, "max_completion_length": 8, "max_steps": 2, "logging_steps": 1,
            "learning_rate": 1e-2, "report_to": "none", "save_strategy": "no", "disable_tqdm": True, **kw}


def problems(**kw):
    with pytest.raises(config.ConfigError) as e:
        config.from_flat({"output_dir": "o", "stage": "grpo", "reward_funcs": ["contains"], **kw})
    return str(e.value)


def test_a_lora_run_logs_rewards_trains_the_adapter_and_saves_it_alone(grpo_dir, tiny_model_dir):
    from safetensors.torch import load_file

    metrics = run.train(config.from_flat(flat(grpo_dir, tiny_model_dir, beta=0.1)))
    out = grpo_dir / "out"
    with open(out / "trainer_log.jsonl") as fh:
        logs = [json.loads(line) for line in fh]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("rewards/characters/mean" in r and "rewards/contains/mean" in r and "kl" in r for r in steps)
    assert metrics["train_tokens"] > 0
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # the adapter moved off its zero init
    assert not os.path.exists(out / "ref")  # TRL's frozen copy of the initial adapter is not saved


def test_lora_with_beta_keeps_a_reference_adapter_not_a_second_base(grpo_dir, tiny_model_dir):
    trainer = run.build(config.from_flat(flat(grpo_dir, tiny_model_dir, beta=0.1))).trainer
    assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default", "ref"}
    trainer = run.build(config.from_flat(flat(grpo_dir, tiny_model_dir, beta=0.0))).trainer
    assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default"}


def test_full_fine_tuning_with_beta_loads_a_frozen_reference_from_the_same_folder(grpo_dir, tiny_model_dir):
    trainer = run.build(config.from_flat(flat(grpo_dir, tiny_model_dir, finetuning_type="full", beta=0.1))).trainer
    ref, model = trainer.ref_model, trainer.model
    assert ref is not None and ref is not model and ref.config._name_or_path == tiny_model_dir
    assert not ref.training
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name


@pytest.mark.parametrize("variant", [{"loss_type": "grpo"}, {"loss_type": "dr_grpo"}, {"loss_type": "dapo"},
                                     {"loss_type": "bnpo"}, {"loss_type": "grpo", "importance_sampling_level": "sequence"},
                                     {"loss_type": "dapo", "scale_rewards": "none", "epsilon_high": 0.28}])
def test_every_variant_takes_a_step(grpo_dir, tiny_model_dir, variant):
    trainer = run.build(config.from_flat(flat(grpo_dir, tiny_model_dir, max_steps=1, **variant))).trainer
    assert all(getattr(trainer.args, k) == v for k, v in variant.items())
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))


def test_generation_batch_must_hold_whole_groups():
    text = problems(num_generations=3, per_device_train_batch_size=4)
    assert ("num_generations 3 does not divide the generation batch 4 (per_device_train_batch_size 4 x 1 process x "
            "gradient_accumulation_steps 1)") in text and "set per_device_train_batch_size: 3" in text
    assert "generation batch 6 (generation_batch_size 6)" in problems(num_generations=4, per_device_train_batch_size=2,
                                                                      generation_batch_size=6)
    assert "num_generations must be >= 2" in problems(num_generations=1, per_device_train_batch_size=1)
    config.from_flat({"output_dir": "o", "stage": "grpo", "reward_funcs": ["contains"], "num_generations": 4,
                      "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})  # 2 x 2 = one whole group


def test_bad_rewards_and_unknown_variants_are_refused_at_validation(tmp_path):
    assert "reward_funcs: `exact_macth` is not a rule" in problems(reward_funcs=["exact_macth"], num_generations=2,
                                                                     per_device_train_batch_size=2)
    assert "reward_funcs is empty" in problems(reward_funcs=[], num_generations=2, per_device_train_batch_size=2)
    assert "reward_weights has 2 values for 1 reward_funcs" in problems(reward_weights=[1.0, 2.0], num_generations=2,
                                                                         per_device_train_batch_size=2)
    assert "loss_type `drgrpo` is unknown" in problems(loss_type="drgrpo", num_generations=2, per_device_train_batch_size=2)
    assert "importance_sampling_level must be token or sequence" in problems(
        importance_sampling_level="seq", num_generations=2, per_device_train_batch_size=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU use_vllm is allowed when vllm is installed")
def test_use_vllm_is_refused_on_the_cpu():
    assert "use_vllm needs a CUDA GPU" in problems(use_vllm=True, num_generations=2, per_device_train_batch_size=2)


def test_grpo_keys_belong_to_the_stage():
    with pytest.raises(config.ConfigError, match="belongs to stage grpo"):
        config.from_flat({"output_dir": "o", "num_generations": 4})  # stage sft


def test_data_problems_are_refused_before_the_model_loads(grpo_dir, tiny_model_dir, monkeypatch):
    from tuneforge.stages import common

    monkeypatch.setattr(common, "load_model", lambda *a: pytest.fail("the model must not load"))
    with pytest.raises(TuneforgeError, match="compares with column `label`") as e:
        run.build(config.from_flat(flat(grpo_dir, tiny_model_dir, reward_funcs=["exact_match:label"])))
    assert e.value.key == "reward_funcs"
    with pytest.raises(TuneforgeError, match="per_device_eval_batch_size 3 is not a multiple of num_generations 4") as e:
        run.build(config.from_flat(flat(grpo_dir, tiny_model_dir, val_size=4, per_device_eval_batch_size=3)))
    assert e.value.key == "per_device_eval_batch_size"


def test_held_out_prompts_are_scored_in_whole_groups(grpo_dir, tiny_model_dir):
    trainer = run.build(config.from_flat(flat(grpo_dir, tiny_model_dir, val_size=4, per_device_eval_batch_size=4))).trainer
    metrics = trainer.evaluate()
    assert "eval_rewards/contains/mean" in metrics and "eval_reward" in metrics


def estimate(**kw):
    from tuneforge.memory.shapes import load_shape
    from tuneforge.run.memory_check import Batch, estimate_for

    cfg = config.resolve(config.from_flat({"output_dir": "o", "stage": "grpo", "model_name_or_path": "smollm2-135m",
                                           "reward_funcs": ["contains"], "num_generations": 4,
                                           "per_device_train_batch_size": 8, "max_completion_length": 100, **kw}), quiet=True)
    return estimate_for(cfg, load_shape("smollm2-135m"), Batch(8, 50, 50, 8, "test"))


def test_the_estimate_counts_completions_generation_buffers_and_references():
    from tuneforge.memory.shapes import load_shape

    shape = load_shape("smollm2-135m")
    report, x = estimate(finetuning_type="lora")
    assert (x.batch, x.seq, x.attention_seq) == (8, 150, 150)
    assert x.extra["log-prob tile"] == 8 * 150 * 32768 * 4  # TRL's fused head: one tile of log-probs, no full logits
    assert x.extra["generation KV cache"] == 2 * shape.layers * shape.kv_dim * 150 * 8 * 4
    assert "reference adapter" not in x.extra and x.reference_copies == 0  # beta 0: no reference at all
    _, x = estimate(finetuning_type="lora", beta=0.04, gradient_accumulation_steps=2)
    assert x.extra["reference adapter"] > 0 and x.reference_copies == 0
    assert x.extra["generation KV cache"] == 2 * shape.layers * shape.kv_dim * 150 * 16 * 4  # 2 steps per generation
    full, x = estimate(finetuning_type="full", beta=0.04)
    assert x.reference_copies == 1 and "reference cop" in full.detail["weights"]
    assert "generation KV cache" in full.detail["overhead"]


def test_tuneforge_estimate_covers_the_stage(capsys):
    from tuneforge.cli import main

    assert main(["estimate", "stage=grpo", "model_name_or_path=smollm2-135m", "reward_funcs=contains", "num_generations=4",
                 "per_device_train_batch_size=4", "finetuning_type=full", "beta=0.04", "--batch", "4", "--seq", "64",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "generation KV cache" in report["detail"]["overhead"] and "reference copy" in report["detail"]["weights"]


def test_written_sampling_keys_reach_the_rollouts_and_greedy_is_refused(grpo_dir, tiny_model_dir, monkeypatch):
    import trl

    class Built(Exception):
        pass

    class Capture:  # stands in for GRPOTrainer: records its arguments, stops the run before any step
        def __init__(self, *a, args=None, **kw):
            raise Built(args)

    monkeypatch.setattr(trl, "GRPOTrainer", Capture)
    with pytest.raises(Built) as e:  # the generation section owns these keys; GRPO samples its completions with them
        run.train(config.from_flat(flat(grpo_dir, tiny_model_dir, temperature=0.5, top_k=7, repetition_penalty=1.2)))
    args = e.value.args[0]
    assert (args.temperature, args.top_k, args.repetition_penalty, args.top_p) == (0.5, 7, 1.2, 1.0)  # top_p: TRL's
    assert "temperature 0 (greedy) makes them identical" in problems(temperature=0, num_generations=2,
                                                                      per_device_train_batch_size=2)
