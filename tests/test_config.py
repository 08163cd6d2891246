"""The RunConfig: flat LLaMA-Factory keys in, typed sections out; every bad input named with its fix."""

import logging

import pytest
import yaml

from tuneforge import config
from tuneforge.cli import main
from tuneforge.config import ConfigError


def load(**kw):
    return config.load(None, {"output_dir": "out", "dataset": "identity", **kw})


def problems_of(**kw) -> str:
    with pytest.raises(ConfigError) as e:
        load(**kw)
    return str(e.value)


def test_flat_keys_land_in_their_sections():
    cfg = load(lora_rank=16, cutoff_len=512, learning_rate=3e-4, template="chatml", model_name_or_path="m")
    assert cfg.method_section("lora").lora_rank == 16
    assert cfg.data.cutoff_len == 512 and cfg.data.template == "chatml"
    assert cfg.train.args["learning_rate"] == 3e-4
    assert cfg.model.model_name_or_path == "m"
    assert cfg.data.dataset == ["identity"]


def test_comma_separated_dataset_becomes_a_list():
    assert load(dataset="a, b,c").data.dataset == ["a", "b", "c"]


def test_typo_gets_did_you_mean():
    assert "unknown key `lora_rnak`; did you mean `lora_rank`?" in problems_of(lora_rnak=8)


def test_training_argument_typo_gets_did_you_mean():
    assert "did you mean `learning_rate`?" in problems_of(learning_rat=1e-4)


def test_wrong_types_are_named():
    msg = problems_of(lora_rank="eight", learning_rate="fast", packing="maybe")
    assert "`lora_rank` must be an integer" in msg
    assert "`learning_rate` must be a number" in msg
    assert "`packing` must be true or false" in msg


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load(lora_rnak=8, cutoff_len="x", lr_scheduler_type="cosin")
    assert len(e.value.problems) == 3


def test_enum_training_argument_is_checked_with_suggestion():
    msg = problems_of(lr_scheduler_type="cosin")
    assert "lr_scheduler_type" in msg and "did you mean `cosine`?" in msg


@pytest.mark.parametrize("kw, expected", [
    ({"lora_rank": 0}, "lora_rank must be > 0 (got 0)"),
    ({"lora_dropout": 1.5}, "lora_dropout must be in [0, 1)"),
    ({"cutoff_len": 0}, "cutoff_len must be > 0"),
    ({"max_samples": 0}, "max_samples must be > 0"),
    ({"val_size": 1.5}, "val_size must be"),
    ({"bf16": True, "fp16": True}, "bf16 and fp16 are both true"),
    ({"resume_from_checkpoint": "auto", "overwrite_output_dir": True}, "resume_from_checkpoint and overwrite_output_dir"),
    ({"interleave_probs": [0.5, 0.5]}, "interleave_probs needs mix_strategy"),
    ({"dataset": "a,b", "mix_strategy": "interleave_under", "interleave_probs": [0.2]}, "one per dataset"),
    ({"finetuning_type": "lorra"}, "finetuning_type `lorra` is not available; did you mean `lora`?"),
    ({"stage": "stf"}, "stage `stf` is not available; did you mean `sft`?"),
    ({"output_dir": ""}, "output_dir is missing"),
    ({"freeze_trainable_layers": 0, "finetuning_type": "freeze"}, "freeze_trainable_layers must not be 0"),
    ({"adapter_name_or_path": "x", "finetuning_type": "full"}, "adapter_name_or_path needs an adapter method"),
    ({"torch_dtype": "float64"}, "`torch_dtype` must be one of"),
])
def test_invalid_values_and_combinations_are_refused(kw, expected):
    assert expected in problems_of(**kw)


def test_llamafactory_only_keys_warn_once_not_refuse(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load(enable_liger_kernel=True, use_unsloth=True, do_train=True, preprocessing_num_workers=1)
    assert cfg.ignored == ["enable_liger_kernel", "use_unsloth"]
    warnings = [r.getMessage() for r in caplog.records if "LLaMA-Factory keys" in r.getMessage()]
    assert len(warnings) == 1 and "enable_liger_kernel" in warnings[0] and "use_unsloth" in warnings[0]


def test_renamed_keys_of_older_transformers_are_mapped():
    cfg = load(warmup_ratio=0.1, evaluation_strategy="no", group_by_length=True, flash_attn="disabled")
    assert cfg.train.args["warmup_steps"] == 0.1
    assert cfg.train.args["eval_strategy"] == "no"
    assert cfg.train.args["train_sampling_strategy"] == "group_by_length"
    assert cfg.model.attn_implementation == "eager"


def test_yaml_and_overrides_merge_with_overrides_winning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: o\ndataset: identity\nlora_rank: 4\nlearning_rate: 1.0e-4\n")
    cfg = config.load(str(path), ["lora_rank=32", "num_train_epochs=2"])
    assert cfg.method_section().lora_rank == 32
    assert cfg.train.args["learning_rate"] == 1e-4 and cfg.train.args["num_train_epochs"] == 2


def test_to_flat_round_trips_through_yaml():
    # One non-default key of every section, written the way to_flat gives them back (a list stays a list).
    written = {
        "model_name_or_path": "my-model", "torch_dtype": "float32", "quantization_type": "fp4",  # model
        "dataset": ["identity"], "cutoff_len": 128, "template": "chatml", "max_samples": 7,  # data
        "finetuning_type": "lora", "memory_check": False,  # method
        "lora_rank": 4, "lora_target": ["q_proj", "v_proj"],  # the lora section
        "learning_rate": 2e-4, "num_train_epochs": 2.0, "logging_steps": 3,  # train
        "output_dir": "out", "plot_loss": False,  # output
        "temperature": 0.3, "top_k": 7, "max_new_tokens": 64,  # generation
        "export_dir": "x", "export_dtype": "float16", "export_size": 2.0,  # export
    }
    cfg = config.from_flat(yaml.safe_load(yaml.safe_dump(written)))
    flat = cfg.to_flat()
    assert {k: flat.get(k, "<missing>") for k in written} == written
    again = config.from_flat(yaml.safe_load(yaml.safe_dump(flat)))
    assert again.to_flat() == flat


@pytest.mark.parametrize("text, expected", [
    ("a: [unclosed", "is not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_malformed_yaml_is_named(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        config.load(str(path))


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="config file `nope.yaml` does not exist"):
        config.load("nope.yaml")


def test_bad_override_syntax_is_named():
    with pytest.raises(ConfigError, match="`lora_rank` is not a `key=value` override"):
        config.load(None, ["lora_rank"])


def test_cli_prints_error_without_traceback_and_exits_2(tmp_path, capsys):
    rc = main(["train", f"output_dir={tmp_path}/o", "dataset=identity", "lora_rnak=8"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "did you mean `lora_rank`?" in err and "Traceback" not in err


def test_every_method_section_field_has_help():
    import dataclasses

    from tuneforge.config.loader import BASE_SECTIONS
    from tuneforge.config.registry import METHOD_SECTIONS

    for cls in {**BASE_SECTIONS, **METHOD_SECTIONS}.values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_packing_is_resolved_on_where_exact():
    def packing(**kw):
        cfg = config.load(None, {"output_dir": "o", **kw})
        assert cfg.data.packing in (None, kw.get("packing"))  # validation never fills it
        return config.resolve(cfg, quiet=True).data.packing

    assert packing() is True
    assert packing(finetuning_type="full") is True
    assert packing(packing=False) is False
    # prompt learning puts virtual tokens in front of the row, which packing cannot keep apart
    assert packing(finetuning_type="prefix") is False
    assert packing(finetuning_type="prompt") is False


def test_yaml_booleans_read_back_as_the_word_a_choice_spells():
    from typing import Literal

    from tuneforge.config.fields import coerce

    assert coerce(False, Literal["error", "warn", "off"]) == "off"  # YAML 1.1: a bare `off` is False
    assert coerce(True, Literal["on", "auto"]) == "on"
    with pytest.raises(ValueError, match="must be one of a, b"):
        coerce(True, Literal["a", "b"])
