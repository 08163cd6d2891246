"""Cross-section checks that touch the filesystem run before anything heavy and name the fix."""

import os

import pytest

from tuneforge import config, preflight
from tuneforge.config import ConfigError


def check(**kw):
    cfg = config.load(None, {"output_dir": kw.pop("output_dir", "unused-out"), **kw})
    preflight.check_output(cfg)
    preflight.check(cfg)
    return cfg


def test_missing_model_folder_is_named(data_dir):
    with pytest.raises(ConfigError, match="model_name_or_path `/no/such/model` does not exist"):
        check(model_name_or_path="/no/such/model", dataset="my_alpaca", dataset_dir=data_dir)


def test_hub_id_not_in_cache_fails_at_once_offline(data_dir):
    with pytest.raises(ConfigError, match="not in the Hugging Face cache; tuneforge works offline"):
        check(model_name_or_path="some-org/some-model-that-is-not-here", dataset="my_alpaca", dataset_dir=data_dir)


def test_unknown_dataset_gets_did_you_mean(data_dir, tiny_model_dir):
    with pytest.raises(ConfigError, match="dataset `my_alpac` is not in .*did you mean `my_alpaca`"):
        check(model_name_or_path=tiny_model_dir, dataset="my_alpac", dataset_dir=data_dir)


def test_registered_file_missing_is_named(tmp_path, tiny_model_dir):
    from conftest import write_json

    write_json(str(tmp_path / "dataset_info.json"), {"gone": {"file_name": "gone.json"}})
    with pytest.raises(ConfigError, match="file_name `gone.json` does not exist"):
        check(model_name_or_path=tiny_model_dir, dataset="gone", dataset_dir=str(tmp_path))


def test_hub_only_dataset_is_refused_offline(tmp_path, tiny_model_dir):
    from conftest import write_json

    write_json(str(tmp_path / "dataset_info.json"), {"remote": {"hf_hub_url": "org/data"}})
    with pytest.raises(ConfigError, match="comes from `hf_hub_url`; tuneforge runs offline"):
        check(model_name_or_path=tiny_model_dir, dataset="remote", dataset_dir=str(tmp_path))


def test_missing_dataset_is_named(tiny_model_dir):
    with pytest.raises(ConfigError, match="dataset is missing"):
        check(model_name_or_path=tiny_model_dir)


def test_problems_from_several_sections_come_together_with_their_keys(data_dir, tmp_path):
    with pytest.raises(ConfigError) as e:
        check(model_name_or_path="/no/model", dataset="nope", dataset_dir=data_dir, adapter_name_or_path=str(tmp_path))
    text = str(e.value)
    assert "/no/model" in text and "`nope`" in text and "adapter_config.json" in text
    assert {p.key for p in e.value.problems} == {"model_name_or_path", "dataset", "adapter_name_or_path"}


def test_an_unregistered_stage_is_a_config_error_naming_the_key_and_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        config.load(None, {"output_dir": "o", "stage": "dpoo"})
    from tuneforge.stages.registry import STAGES

    assert e.value.problems[0].key == "stage" and "stage `dpoo` is not available; did you mean `dpo`?" in str(e.value)
    assert f"choose one of {', '.join(sorted(STAGES))}" in str(e.value)


def test_finished_output_dir_is_not_overwritten(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "all_results.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a finished run; choose a new output_dir, or set overwrite_output_dir"):
        check(model_name_or_path=tiny_model_dir, dataset="my_alpaca", dataset_dir=data_dir, output_dir=str(out))
    check(model_name_or_path=tiny_model_dir, dataset="my_alpaca", dataset_dir=data_dir, output_dir=str(out), overwrite_output_dir=True)


def test_unfinished_run_with_checkpoints_asks_to_resume(tmp_path, data_dir, tiny_model_dir):
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(ConfigError, match="resume_from_checkpoint: auto"):
        check(model_name_or_path=tiny_model_dir, dataset="my_alpaca", dataset_dir=data_dir, output_dir=str(tmp_path / "run"))


def test_resume_auto_picks_the_newest_checkpoint(tmp_path):
    from tuneforge.train.output import resolve_resume

    for n in (5, 20, 10):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")  # an empty folder is no checkpoint
    cfg = config.load(None, {"output_dir": str(tmp_path), "resume_from_checkpoint": "auto"})
    assert resolve_resume(cfg.output) == os.path.join(str(tmp_path), "checkpoint-20")


def test_resume_from_a_folder_that_is_no_checkpoint_is_named(tmp_path):
    from tuneforge import TuneforgeError
    from tuneforge.train.output import resolve_resume

    cfg = config.load(None, {"output_dir": str(tmp_path), "resume_from_checkpoint": str(tmp_path)})
    with pytest.raises(TuneforgeError, match="is not a checkpoint folder"):
        resolve_resume(cfg.output)


def test_adapter_folder_without_adapter_config_is_named(tmp_path, data_dir, tiny_model_dir):
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        check(model_name_or_path=tiny_model_dir, dataset="my_alpaca", dataset_dir=data_dir, adapter_name_or_path=str(tmp_path))


def test_smollm2_alias_resolves_to_the_packaged_gguf():
    from tuneforge.models import resolve

    src = resolve("smollm2-135m-instruct")
    assert src.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and os.path.isfile(src.path)


def test_gguf_conversion_is_cached(tmp_path):
    """A second resolution of the same GGUF reuses the converted folder (no second conversion)."""
    from tuneforge.models import gguf, resolve

    src = resolve("smollm2-135m-instruct")
    folder = gguf.cached_folder(src, str(tmp_path))
    os.makedirs(folder)
    (open(os.path.join(folder, "config.json"), "w")).write("{}")
    assert gguf.convert(src, str(tmp_path)) == folder  # returns at once: nothing is loaded


def test_gguf_cache_is_keyed_by_content_not_path(tmp_path):
    """The same GGUF bytes in two places (two venvs) share one conversion; other bytes get their own."""
    from tuneforge.models import gguf
    from tuneforge.models.aliases import ModelSource

    big = os.urandom(3 * gguf.SAMPLE)
    for name, data in (("a/m.gguf", big), ("b/m.gguf", big), ("c/m.gguf", big[:-1] + b"x"), ("d/m.gguf", b"small")):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_bytes(data)
    folders = [gguf.cached_folder(ModelSource(path=str(tmp_path / d / "m.gguf"), gguf_file="m.gguf"),
                                  "/cache") for d in "abcd"]
    assert folders[0] == folders[1] and len(set(folders)) == 3
