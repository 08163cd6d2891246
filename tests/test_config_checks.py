"""Bad settings that TrainingArguments accepts but that crash after the model loads or silently do nothing are refused
by `tuneforge train` before anything heavy, naming the key and the fix; never a traceback."""

import time

import pytest

from tuneforge.cli import main


@pytest.mark.parametrize("setting, key, words", [
    ("per_device_train_batch_size=0", "per_device_train_batch_size", ">= 1 (got 0)"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps", ">= 1 (got 0)"),
    ("learning_rate=-1", "learning_rate", "> 0 (got -1)"),
    ("logging_steps=-3", "logging_steps", "> 0 (got -3)"),
    ("num_train_epochs=0", "num_train_epochs", "or set max_steps"),
    ("max_steps=0", "max_steps", "-1 to train num_train_epochs"),
    ("weight_decay=-0.1", "weight_decay", ">= 0"),
    ("report_to=wandbb", "report_to", "did you mean `wandb`?"),
    ("report_to=tensorboard", "report_to", "pip install tensorboard"),
    ("finetuning_type=lisa lisa_layers=500", "lisa_layers", "more than the model's 2 decoder layers"),
    ("finetuning_type=freeze freeze_trainable_layers=999", "freeze_trainable_layers", "more layers than the model's 2"),
])
def test_bad_setting_is_refused_before_the_model_loads_naming_the_key(setting, key, words, tiny_model_dir, data_dir, tmp_path,
                                                                      capsys, monkeypatch):
    import transformers

    from tuneforge import preflight
    from tuneforge.config import ConfigError, load

    if key == "report_to" and "tensorboard" in setting:
        import transformers.integrations.integration_utils as iu

        monkeypatch.setattr(iu, "get_available_reporting_integrations", lambda: [])  # as on a machine without it
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model was loaded")))
    args = ["train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", "template=chatml",
            f"output_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", *setting.split()]
    start = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    with pytest.raises(ConfigError) as e:  # the same problem, as a (key, message) pair
        preflight.check(load(None, dict(a.split("=", 1) for a in args[1:])))
    assert key in [p.key for p in e.value.problems]

def test_zero_epochs_with_max_steps_is_fine():
    from tuneforge import config

    assert config.load(None, {"output_dir": "o", "num_train_epochs": 0, "max_steps": 5}).train.args["max_steps"] == 5


@pytest.mark.parametrize("text, words", [
    (b"output_dir: o\nlora_rank: 8\nlora_rank: 16\n", "`lora_rank` is set twice (lines 2 and 3)"),
    (b"output_dir: o\nlearning_rate: \xff\xfe\n", "is not UTF-8 text"),
    (b"\x00\x01\x02binary", "is not valid YAML"),
])
def test_broken_yaml_files_are_named(text, words, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(path) in err and "Traceback" not in err
