"""Stage rm on a tiny random model: the LoRA run trains and saves the score head and loads back (load_reward_model) to
the same scores; eval_accuracy is the share of held-out pairs ranked right; a full run saves a one-label classifier;
settings the stage cannot honour and folders that are not reward models are refused naming the key; the memory hook
counts both sides of a pair."""

import json
import os

import pytest

from conftest import write_json
from tuneforge import TuneforgeError, config, run
from tuneforge.config.errors import ConfigError
from tuneforge.models.reward import load_reward_model, reward_kind, score

# brief replies preferred to rambling ones: learnable in a few steps even by a random model
PAIRS = [{"instruction": f"Answer in one word: what is item {i}?", "chosen": "Red.",
          "rejected": f"Well, item {i} is a thing that many people talk about, and there is a lot to say."} for i in range(12)]

# replies a random head ranks either way
MIXED = [{"instruction": f"Say a word about {i}.", "chosen": w, "rejected": v}
         for i, (w, v) in enumerate(zip("red blue hello world paris answer one two three four".split(),
                                        "cat dog sun moon five six seven eight nine zero".split()))]


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("rm-data"))
    write_json(f"{d}/pairs.json", PAIRS)
    write_json(f"{d}/dataset_info.json", {"pairs": {"file_name": "pairs.json", "ranking": True}})
    return d


def rm_cfg(model_dir, data_dir, out, **kw):
    return config.from_flat({"stage": "rm", "model_name_or_path": model_dir, "dataset": "pairs", "dataset_dir": data_dir,
                             "output_dir": str(out), "template": "chatml", "cutoff_len": 200, "val_size": 4,
                             "per_device_train_batch_size": 4, "max_steps": 6, "logging_steps": 1, "learning_rate": 1e-2,
                             "lora_rank": 4, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
                             "cache_dir": os.path.join(os.path.dirname(str(out)), "cache"), "allocator": "system", **kw})


def conversation(row: dict, side: str) -> list[dict]:
    return [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row[side]}]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, pair_data, tmp_path_factory):
    """A trained LoRA reward model: (output folder, the trainer still in memory, its metrics)."""
    out = tmp_path_factory.mktemp("rm-lora") / "run"
    prepared = run.build(rm_cfg(tiny_model_dir, pair_data, out))
    metrics = run.train_and_save(prepared)
    return str(out), prepared.trainer, metrics


def test_lora_run_trains_and_saves_the_score_head_beside_the_adapter(lora_run):
    from safetensors import safe_open

    out, trainer, _ = lora_run
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora" not in n]
    assert trained and all("score" in n for n in trained)  # the head trains (peft's modules_to_save), nothing else but LoRA
    with open(os.path.join(out, "adapter_config.json")) as fh:
        assert json.load(fh)["task_type"] == "SEQ_CLS"
    with safe_open(os.path.join(out, "adapter_model.safetensors"), "pt") as fh:
        assert any(k.endswith("score.weight") for k in fh.keys())
    assert reward_kind(out) == "lora"


def test_saved_lora_reward_model_loads_back_to_the_same_scores(lora_run):
    import torch

    from tuneforge.models.reward import encode_conversation, pad_right

    out, trainer, _ = lora_run
    rm = load_reward_model(out)  # base found from the adapter's record
    convs = [conversation(r, side) for r in PAIRS[:3] for side in ("chosen", "rejected")]
    loaded = score(rm, convs, batch_size=4)
    ids, mask = pad_right([encode_conversation(trainer.processing_class, c, 200) for c in convs], trainer.processing_class.pad_token_id)
    trainer.model.eval()
    with torch.no_grad():
        in_memory = trainer.model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    assert loaded == pytest.approx(in_memory, abs=1e-5)
    assert rm.score(convs[:1]) == pytest.approx(loaded[:1], abs=1e-6)  # batch size and padding do not change a score


def test_eval_accuracy_is_the_share_of_held_out_pairs_ranked_right(tiny_model_dir, pair_data, tmp_path):
    """Untrained (a random head ranks some pairs right), in uneven eval batches of 3 + 2: TRL's mean of per-batch
    accuracies would weigh the short batch like the full one."""
    import torch

    from tuneforge.models.reward import pad_right

    d = str(tmp_path / "data")
    write_json(f"{d}/pairs.json", MIXED)
    write_json(f"{d}/dataset_info.json", {"pairs": {"file_name": "pairs.json", "ranking": True}})
    trainer = run.build(rm_cfg(tiny_model_dir, d, tmp_path / "run", val_size=5, per_device_eval_batch_size=3)).trainer
    metrics = trainer.evaluate()
    held_out = trainer.eval_dataset
    trainer.model.eval()
    with torch.no_grad():
        def scores(side):
            ids, mask = pad_right(held_out[side + "_ids"], trainer.processing_class.pad_token_id)
            return trainer.model(input_ids=ids, attention_mask=mask).logits[:, 0]
        right = (scores("chosen") > scores("rejected")).tolist()
    assert len(right) == 5 and 0 < sum(right) < 5, right  # a mixed ranking, else any averaging would agree
    assert metrics["eval_accuracy"] == sum(right) / 5


def test_training_ranks_held_out_pairs_right(lora_run):
    out, _, metrics = lora_run
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        losses = [json.loads(line)["loss"] for line in fh if '"loss"' in line]
    assert losses[-1] < 0.5 * losses[0], losses
    assert metrics["eval_accuracy"] == 1.0


def test_full_run_saves_a_one_label_classifier_that_scores(tiny_model_dir, pair_data, tmp_path):
    out = tmp_path / "run"
    run.train(rm_cfg(tiny_model_dir, pair_data, out, finetuning_type="full", max_steps=1, learning_rate=1e-4))
    with open(out / "config.json") as fh:
        conf = json.load(fh)
    assert conf["architectures"] == ["LlamaForSequenceClassification"] and len(conf["id2label"]) == 1
    assert reward_kind(str(out)) == "full"
    assert len(load_reward_model(str(out)).score([conversation(PAIRS[0], "chosen")])) == 1


def test_freeze_trains_the_new_score_head_too(tiny_model_dir, pair_data, tmp_path):
    prepared = run.build(rm_cfg(tiny_model_dir, pair_data, tmp_path / "run", finetuning_type="freeze", freeze_trainable_layers=1))
    trained = {n.split(".")[0] for n, p in prepared.trainer.model.named_parameters() if p.requires_grad}
    assert trained == {"model", "score"}


def test_an_adapter_method_without_a_head_is_refused_naming_finetuning_type(tiny_model_dir, pair_data, tmp_path):
    with pytest.raises(TuneforgeError, match="score head") as e:
        run.build(rm_cfg(tiny_model_dir, pair_data, tmp_path / "run", finetuning_type="prompt"))
    assert e.value.key == "finetuning_type"


def test_max_length_is_refused_in_favour_of_cutoff_len(tiny_model_dir, pair_data, tmp_path):
    with pytest.raises(TuneforgeError, match="cutoff_len") as e:
        run.build(rm_cfg(tiny_model_dir, pair_data, tmp_path / "run", max_length=32))
    assert e.value.key == "max_length"


def test_folders_that_are_not_reward_models_are_named(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with pytest.raises(TuneforgeError, match="is not a folder") as e:
        reward_kind(str(tmp_path / "missing"))
    assert e.value.key == "reward_model"
    with pytest.raises(TuneforgeError, match="not a reward model"):
        reward_kind(tiny_model_dir)  # a causal LM
    sft = str(tmp_path / "sft-adapter")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules="all-linear")).save_pretrained(sft)
    with pytest.raises(TuneforgeError, match="without a score head"):
        reward_kind(sft)


def test_the_estimate_counts_both_sides_of_a_pair(tiny_model_dir):
    from tuneforge.memory.shapes import load_shape
    from tuneforge.run.memory_check import Batch, estimate_for

    cfg = config.resolve(config.from_flat({"stage": "rm", "model_name_or_path": tiny_model_dir, "output_dir": "o"}), quiet=True)
    _, x = estimate_for(cfg, load_shape(tiny_model_dir), Batch(3, 40, 40, 3, "three pairs"))
    assert x.batch == 6


def test_unknown_stage_keys_name_the_stage_that_owns_them():
    with pytest.raises(ConfigError, match="belongs to stage rm"):
        config.from_flat({"stage": "sft", "output_dir": "o", "center_rewards_coefficient": 0.01})
