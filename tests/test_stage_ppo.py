"""Stage ppo: the PPO arithmetic on hand-computed numbers; on a tiny random model, the model-shared setup (one base in
memory, the reward adapter frozen through every step and scoring as the reward folder does on its own, the reference
the adapter turned off), the separate reward model and reference of `full`, what a run saves, settings refused
naming their key, LLaMA-Factory's names, and what the estimate adds."""

import gc
import json
import math
import os

import pytest

from conftest import write_json
from tuneforge import TuneforgeError, config, run
from tuneforge.config.errors import ConfigError

PAIRS = [{"instruction": f"Answer in one word: what is item {i}?", "chosen": "Red.",
          "rejected": f"Well, item {i} is a thing that many people talk about."} for i in range(8)]
PROMPTS = [{"instruction": f"Answer in one word: what is thing {i}?"} for i in range(8)]


# ---------------------------------------------------------------- the arithmetic

def test_kl_penalty_on_every_reply_token_and_the_score_on_the_last():
    import torch

    from tuneforge.train.ppo_math import kl_rewards

    rewards, kl = kl_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 0.0]]),
                             torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.5)
    assert kl.tolist() == [[0.5, -1.0, 0.0]]
    assert rewards.tolist() == [[-0.25, 1.5, 0.0]]  # -0.5 x kl, plus the score on the last reply token


def test_gae_runs_backwards_over_the_reply_and_ignores_padding():
    import torch

    from tuneforge.train.ppo_math import gae

    adv, ret = gae(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.5, 1.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]]),
                   gamma=1.0, lam=0.5)
    # t=1: delta = 2 + 0 - 1 = 1; t=0: delta = 1 + 1 - 0.5 = 1.5, advantage 1.5 + 0.5 x 1 = 2
    assert adv.tolist() == [[2.0, 1.0, 0.0]] and ret.tolist() == [[2.5, 2.0, 0.0]]


def test_whitening_uses_the_masked_entries_of_every_batch_together():
    import torch

    from tuneforge.train.ppo_math import masked_whiten

    xs, masks = [torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[5.0]])], [torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0]])]
    white = masked_whiten(xs, masks)  # mean 3, unbiased std 2
    assert [w.tolist() for w in white] == [[[-1.0, 0.0, 100.0]], [[1.0]]]
    kept = masked_whiten(xs, masks, shift_mean=False)
    assert [w.tolist() for w in kept] == [[[2.0, 3.0, 100.0]], [[4.0]]]


def test_clipped_losses_take_the_pessimistic_side():
    import torch

    from tuneforge.train.ppo_math import ppo_loss

    one = torch.ones(1, 1)
    loss, stats = ppo_loss(torch.log(torch.tensor([[1.5]])), 0 * one, 2.0 * one, 1.0 * one, 1.0 * one, 1.5 * one, one)
    # ratio 1.5 clipped to 1.2: policy -1.2; value 2.0 vs clipped 1.2 against return 1.5: 0.5 x max(0.25, 0.09)
    assert stats["policy_loss"] == pytest.approx(-1.2) and stats["value_loss"] == pytest.approx(0.125)
    assert loss.item() == pytest.approx(-1.2 + 0.1 * 0.125) and stats["clip_fraction"] == 1.0
    _, stats = ppo_loss(torch.log(torch.tensor([[0.5]])), 0 * one, one, one, -one, one, one)
    assert stats["policy_loss"] == pytest.approx(0.8)  # negative advantage: max(0.5, 0.8)


def test_kl_coefficient_moves_toward_the_target_by_at_most_a_fifth_per_horizon():
    from tuneforge.train.ppo_math import AdaptiveKL

    ctl = AdaptiveKL(target=6.0)
    assert ctl.update(12.0, 100) == pytest.approx(0.2 * 1.002)  # error capped at +0.2, scaled by 100 / 10000
    assert ctl.update(3.0, 100) == pytest.approx(0.2 * 1.002 * (1 - 0.2 * 0.01))


def test_running_score_moments_match_the_whole_history():
    import torch

    from tuneforge.train.ppo_math import RunningMoments

    m = RunningMoments()
    m.update(torch.tensor([1.0, 2.0, 3.0]))
    m.update(torch.tensor([4.0, 5.0]))
    assert m.mean == pytest.approx(3.0) and m.std == pytest.approx(math.sqrt(2.5), rel=1e-6)
    assert m.normalize(torch.tensor([3.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_a_reply_ends_at_its_first_end_of_sequence_token():
    import torch

    from tuneforge.train.ppo import reply_mask

    reply = torch.tensor([[5, 2, 2, 7], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert reply_mask(reply, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


# ---------------------------------------------------------------- runs on a tiny model

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ppo-data"))
    write_json(f"{d}/pairs.json", PAIRS)
    write_json(f"{d}/prompts.json", PROMPTS)
    write_json(f"{d}/dataset_info.json", {"pairs": {"file_name": "pairs.json", "ranking": True},
                                          "prompts": {"file_name": "prompts.json"}})
    return d


def base_cfg(model_dir, data_dir, out, **kw):
    return {"model_name_or_path": model_dir, "dataset_dir": data_dir, "output_dir": str(out), "template": "chatml",
            "cutoff_len": 200, "per_device_train_batch_size": 2, "logging_steps": 1, "lora_rank": 4, "save_strategy": "no",
            "report_to": "none", "disable_tqdm": True, "cache_dir": os.path.join(os.path.dirname(str(out)), "cache"),
            "allocator": "system", **kw}


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, data, tmp_path_factory):
    """A LoRA reward model trained for a few steps on the tiny model."""
    out = tmp_path_factory.mktemp("rm") / "run"
    run.train(config.from_flat(base_cfg(tiny_model_dir, data, out, stage="rm", dataset="pairs", max_steps=4, learning_rate=1e-2)))
    return str(out)


@pytest.fixture(scope="module")
def full_reward_dir(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm-full") / "run"
    run.train(config.from_flat(base_cfg(tiny_model_dir, data, out, stage="rm", dataset="pairs", max_steps=1,
                                        finetuning_type="full", learning_rate=1e-4)))
    return str(out)


def ppo_cfg(model_dir, data_dir, out, reward, **kw):
    settings = {"stage": "ppo", "dataset": "prompts", "reward_model": reward, "max_new_tokens": 6, "ppo_epochs": 2,
                "learning_rate": 1e-2, "max_steps": 2, **kw}
    return config.from_flat(base_cfg(model_dir, data_dir, out, **settings))


def models_alive(suffix: str) -> list:
    from transformers import PreTrainedModel

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, PreTrainedModel) and type(o).__name__.endswith(suffix)]


def test_model_shared_ppo_keeps_one_base_and_never_trains_the_reward_adapter(tiny_model_dir, data, reward_dir, tmp_path):
    import torch
    from safetensors import safe_open

    lms, classifiers = len(models_alive("ForCausalLM")), len(models_alive("ForSequenceClassification"))
    out = tmp_path / "run"
    prepared = run.build(ppo_cfg(tiny_model_dir, data, out, reward_dir, max_steps=3))
    trainer = prepared.trainer
    assert len(models_alive("ForCausalLM")) == lms + 1 and len(models_alive("ForSequenceClassification")) == classifiers
    assert trainer.reference is None and sorted(trainer.model.peft_config) == ["default", "reward"]
    params = dict(trainer.model.named_parameters())
    reward = {n: p.detach().clone() for n, p in params.items() if ".reward." in n}
    policy = {n: p.detach().clone() for n, p in params.items() if ".default." in n and "lora_A" in n}
    assert reward and policy
    run.train_and_save(prepared)
    assert all(torch.equal(params[n], before) and not params[n].requires_grad for n, before in reward.items())
    assert any(not torch.equal(params[n], before) for n, before in policy.items())  # the policy did learn
    assert trainer.model.active_adapter == "default" and all(params[n].requires_grad for n in policy)
    assert trainer.value_head.summary.weight.abs().sum() > 0  # zero-initialised, trained since
    saved = sorted(os.listdir(out))
    assert "adapter_model.safetensors" in saved and "value_head.safetensors" in saved and "reward" not in saved
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as fh:
        assert not any("reward" in k or "score" in k for k in fh.keys())
    with open(out / "trainer_log.jsonl") as fh:
        logged = [json.loads(line) for line in fh if '"loss"' in line]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reward"]) for r in logged)
    assert abs(logged[0]["kl"]) < 1e-4  # the first rollout's policy is the base: LoRA's B starts at zero


def test_the_shared_reward_scores_as_the_reward_folder_does_on_its_own(tiny_model_dir, data, reward_dir, tmp_path):
    from tuneforge.models.reward import load_reward_model

    trainer = run.build(ppo_cfg(tiny_model_dir, data, tmp_path / "run", reward_dir)).trainer
    convs = [[{"role": "user", "content": p["instruction"]}, {"role": "assistant", "content": reply}]
             for p in PROMPTS[:3] for reply in ("Red.", "It is a long story about many things.")]
    shared = trainer.reward.score(convs)
    alone = load_reward_model(reward_dir).score(convs)
    assert shared == pytest.approx(alone, abs=1e-5)
    assert max(alone) - min(alone) > 1e-3  # the scores differ, so equality means something


def test_reference_log_probs_are_the_policy_with_its_adapter_off(tiny_model_dir, data, reward_dir, tmp_path):
    import torch

    trainer = run.build(ppo_cfg(tiny_model_dir, data, tmp_path / "run", reward_dir)).trainer
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if ".default." in n and "lora_B" in n:
                p.normal_()  # the policy now differs from the base
    rollout = trainer._rollout([trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])])[0]
    base = trainer.model.get_base_model()
    with torch.no_grad(), trainer.model.disable_adapter():
        want, _ = trainer._forward(base, rollout, values=False)
    assert torch.allclose(rollout["ref_logprobs"], want, atol=1e-5)
    assert not torch.allclose(rollout["logprobs"], want, atol=1e-3)


def test_full_reward_and_full_policy_load_separate_frozen_models(tiny_model_dir, data, full_reward_dir, tmp_path):
    classifiers = len(models_alive("ForSequenceClassification"))
    trainer = run.build(ppo_cfg(tiny_model_dir, data, tmp_path / "run", full_reward_dir, finetuning_type="full",
                                reward_model_type="full", learning_rate=1e-5)).trainer
    assert len(models_alive("ForSequenceClassification")) == classifiers + 1
    assert trainer.reference is not None and not any(p.requires_grad for p in trainer.reference.parameters())
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def cfg_error(model_dir, data_dir, tmp_path, reward, **kw) -> TuneforgeError:
    with pytest.raises(TuneforgeError) as e:
        run.build(ppo_cfg(model_dir, data_dir, tmp_path / "run", reward, **kw))
    return e.value


@pytest.mark.parametrize("kw, key, words", [
    ({"reward_model": None}, "reward_model", "reward_model is missing"),
    ({"ppo_epochs": 0}, "ppo_epochs", "at least 1"),
    ({"finetuning_type": "full"}, "reward_model_type", "reward_model_type: full"),
    ({"finetuning_type": "prompt"}, "finetuning_type", "not supported"),
    ({"pissa_init": True}, "pissa_init", "drop pissa_init"),
])
def test_settings_ppo_cannot_honour_are_refused_naming_the_key(tiny_model_dir, data, reward_dir, tmp_path, kw, key, words):
    kw = dict(kw)
    e = cfg_error(tiny_model_dir, data, tmp_path, kw.pop("reward_model", reward_dir), **kw)
    assert isinstance(e, ConfigError) and key in [p.key for p in e.problems] and words in str(e), str(e)


def test_ppo_settings_are_refused_when_the_config_loads_with_every_other_problem(tmp_path):
    from tuneforge.config import ConfigError

    with pytest.raises(ConfigError) as e:  # no model or data exists: nothing is read before these are reported
        config.from_flat({"stage": "ppo", "output_dir": str(tmp_path / "o"), "ppo_epochs": 0, "learning_rate": -1,
                          "resume_from_checkpoint": "auto"})
    assert {"reward_model", "ppo_epochs", "resume_from_checkpoint"} <= {p.key for p in e.value.problems}, str(e.value)


def test_reward_folders_that_do_not_fit_are_refused_before_the_model_loads(tiny_model_dir, data, full_reward_dir, tmp_path):
    e = cfg_error(tiny_model_dir, data, tmp_path, str(tmp_path / "nowhere"))
    assert e.key == "reward_model" and "is not a folder" in str(e)
    e = cfg_error(tiny_model_dir, data, tmp_path, full_reward_dir)
    assert e.key == "reward_model" and "set reward_model_type: full" in str(e)


def test_a_reward_model_of_another_base_is_refused(tmp_path, data, tiny_model_dir):
    from conftest import make_model_dir

    wide = make_model_dir(tmp_path / "wide", hidden=64, intermediate=128)
    rm = tmp_path / "rm"
    run.train(config.from_flat(base_cfg(wide, data, rm, stage="rm", dataset="pairs", max_steps=1, learning_rate=1e-3)))
    e = cfg_error(tiny_model_dir, data, tmp_path, str(rm))
    assert e.key == "reward_model" and "hidden size 64" in str(e)


def test_llamafactory_ppo_keys_are_this_stages_keys():
    cfg = config.from_flat({"stage": "ppo", "do_train": True, "output_dir": "o", "reward_model": "saves/rm", "ppo_epochs": 2,
                            "ppo_buffer_size": 2, "ppo_target": 3.0, "ppo_score_norm": True, "ppo_whiten_rewards": True,
                            "reward_model_type": "full", "top_k": 0, "top_p": 0.9, "max_new_tokens": 16})
    assert {k: cfg.train.args[k] for k in ("ppo_epochs", "ppo_buffer_size", "ppo_target", "ppo_score_norm", "ppo_whiten_rewards",
                                           "reward_model", "reward_model_type")} == {
        "ppo_epochs": 2, "ppo_buffer_size": 2, "ppo_target": 3.0, "ppo_score_norm": True, "ppo_whiten_rewards": True,
        "reward_model": "saves/rm", "reward_model_type": "full"}
    with pytest.raises(ConfigError, match="reward_model_type"):
        config.from_flat({"stage": "ppo", "output_dir": "o", "reward_model_type": "api"})


def test_the_estimate_adds_generation_cache_value_head_and_reward(tiny_model_dir):
    from tuneforge.memory.shapes import load_shape
    from tuneforge.run.memory_check import Batch, estimate_for

    shape = load_shape(tiny_model_dir)

    def estimate(**kw):
        flat = {"stage": "ppo", "model_name_or_path": tiny_model_dir, "output_dir": "o", "max_new_tokens": 16,
                "reward_model": "saves/rm", **kw}
        return estimate_for(config.resolve(config.from_flat(flat), quiet=True), shape, Batch(2, 20, 20, 2, "two prompts"))

    report, x = estimate()
    assert x.seq == 36 and not x.supervised_logits_only and x.reference_copies == 0
    assert x.extra["generation KV cache"] == 2 * 36 * shape.layers * 2 * shape.kv_dim * 4
    assert x.extra["reward adapter"] > 0 and x.extra["value head (weights, gradient, AdamW)"] == 16 * shape.hidden
    _, full = estimate(reward_model_type="full", finetuning_type="full")
    assert full.reference_copies == 2 and "reward adapter" not in full.extra  # a separate reward model and reference
    assert "KV cache" in report.detail["overhead"]
