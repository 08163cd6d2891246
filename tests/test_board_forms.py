"""The Board's forms: every key of `config.describe()` has a field, and form <-> config round-trips for every key
(no setting typed in the UI is silently dropped). Pure functions: no gradio, no browser."""

import pytest

from tuneforge.board import forms
from tuneforge.config import describe


@pytest.fixture(scope="module")
def keys():
    return describe()


@pytest.fixture(scope="module")
def specs(keys):
    return forms.spec(keys)


def _other_value(k):
    """A value for key `k` that differs from its default (what a user would type)."""
    if k.choices:
        return next(c for c in k.choices if c != k.default)
    if k.type == "bool":
        return not bool(k.default) if isinstance(k.default, bool) or k.default is None else True
    if k.type == "int":
        return (k.default + 3) if isinstance(k.default, int) and not isinstance(k.default, bool) else 7
    if k.type == "float":
        return (k.default + 0.25) if isinstance(k.default, (int, float)) and not isinstance(k.default, bool) else 0.125
    if k.type == "list":
        return ["a_item", "b_item"]
    if k.type == "dict":
        return {"some_key": 1}
    return "typed_text"


def _context(k) -> dict:
    """stage/finetuning_type under which key `k` applies."""
    if not k.owner:
        return {}
    owner = k.owner.split(",")[0]
    return {"finetuning_type": owner} if k.section == "method" else {"stage": owner}


def test_every_describe_key_has_exactly_one_field(keys, specs):
    # a key two sections declare (`temperature`: generation and grpo's arguments) is one flat YAML key, one field
    assert sorted(f.name for f in specs) == sorted({k.name for k in keys})
    assert len({f.elem_id for f in specs}) == len(specs)


def test_the_stable_element_ids_are_on_their_keys(specs):
    ids = {f.name: f.elem_id for f in specs}
    assert ids["model_name_or_path"] == "tf-model" and ids["stage"] == "tf-stage" and ids["finetuning_type"] == "tf-method"
    assert ids["dataset"] == "tf-dataset" and ids["max_steps"] == "tf-max-steps" and ids["output_dir"] == "tf-output-dir"


def test_an_untouched_form_writes_only_what_it_trains(specs):
    cfg, errors = forms.config_from_values(specs, [f.value for f in specs])
    assert errors == {}
    assert cfg == {"model_name_or_path": "smollm2-135m-instruct", "stage": "sft", "finetuning_type": "lora"}


@pytest.mark.parametrize("name", sorted({k.name for k in describe()}))
def test_every_key_round_trips_through_the_form(specs, keys, name):
    k = next(k for k in keys if k.name == name)  # the first: the section the loader gives the flat key to
    value = _other_value(k)
    flat = {**_context(k), name: value}
    values, unknown = forms.values_from_config(specs, flat)
    assert unknown == []
    cfg, errors = forms.config_from_values(specs, values)
    assert errors == {}
    target = name
    if name not in cfg:  # a LLaMA-Factory alias (`pref_beta`) comes back under the key it names
        target = next(n for n in cfg if n not in ("model_name_or_path", "stage", "finetuning_type"))
    assert forms.same(cfg[target], value), (name, cfg)


def test_keys_of_another_method_are_not_written(specs):
    values, _ = forms.values_from_config(specs, {"finetuning_type": "lora", "lora_rank": 16})
    by = {f.name: i for i, f in enumerate(specs)}
    values[by["finetuning_type"]] = "full"
    cfg, _ = forms.config_from_values(specs, values)
    assert "lora_rank" not in cfg and cfg["finetuning_type"] == "full"


def test_a_stage_default_follows_the_stage(specs):
    lr = next(f for f in specs if f.name == "learning_rate")
    assert lr.stage_defaults and lr.value == lr.stage_defaults["sft"]
    values, _ = forms.values_from_config(specs, {"stage": "dpo"})
    cfg, _ = forms.config_from_values(specs, values)
    assert "learning_rate" not in cfg  # dpo's own default is shown and not written


def test_a_bad_number_is_an_error_on_its_field(specs):
    values = [f.value for f in specs]
    by = {f.name: i for i, f in enumerate(specs)}
    values[by["max_samples"]] = "many"
    cfg, errors = forms.config_from_values(specs, values)
    assert "max_samples" in errors and "max_samples" in errors["max_samples"]
    assert "max_samples" not in cfg


def test_bad_yaml_in_a_list_field_names_the_key(specs):
    values = [f.value for f in specs]
    by = {f.name: i for i, f in enumerate(specs)}
    name = next(f.name for f in specs if f.widget == "yaml" and f.type == "list" and not f.owner)
    values[by[name]] = "[unclosed"
    _, errors = forms.config_from_values(specs, values)
    assert name in errors and f"`{name}`" in errors[name]


def test_a_llamafactory_yaml_loads_into_the_form_and_validates(specs, tmp_path):
    from tuneforge import config

    path = tmp_path / "lf.yaml"
    path.write_text("model_name_or_path: smollm2-135m-instruct\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
                    "lora_rank: 4\ndataset: identity,alpaca_en_demo\ntemplate: qwen\ncutoff_len: 128\n"
                    "per_device_train_batch_size: 2\nlearning_rate: 1.0e-4\noutput_dir: saves/x\n")
    values, _ = forms.values_from_config(specs, config.read_yaml(str(path)))
    cfg, errors = forms.config_from_values(specs, values)
    assert errors == {}
    assert cfg["lora_rank"] == 4 and cfg["dataset"] == ["identity", "alpaca_en_demo"] and cfg["cutoff_len"] == 128
    assert cfg["learning_rate"] == pytest.approx(1e-4) and cfg["output_dir"] == "saves/x"
    config.from_flat(cfg, purpose="train")  # what the form writes is a valid run config


def test_the_yaml_preview_reads_back_as_the_same_config(specs):
    import yaml

    cfg = {"model_name_or_path": "smollm2-135m-instruct", "stage": "sft", "finetuning_type": "lora", "dataset": ["identity"],
           "max_steps": 3, "learning_rate": 0.001, "lora_target": ["q_proj", "v_proj"]}
    assert yaml.safe_load(forms.to_yaml(cfg)) == cfg
    assert forms.cli_overrides(cfg).startswith("tuneforge train model_name_or_path=smollm2-135m-instruct")


def test_supervised_marks_become_highlighted_spans():
    from tuneforge.board.tabs.train import marked_spans

    assert marked_spans("<user>hi [[hello]] x[[y]]") == [("<user>hi ", None), ("hello", "supervised"), (" x", None),
                                                          ("y", "supervised")]


def test_every_ui_text_has_a_chinese_translation():
    from tuneforge.board.i18n import EN, ZH

    assert set(EN) == set(ZH)
    assert all(ZH[k].strip() for k in EN)


def test_the_data_preview_highlights_supervised_tokens(tiny_model_dir, data_dir):
    from tuneforge.board.tabs.train import preview_data

    spans, note = preview_data({"model_name_or_path": tiny_model_dir, "dataset": ["my_alpaca"], "dataset_dir": data_dir})
    assert "my_alpaca: 16 usable rows" in note
    assert any(label == "supervised" and "Forge" in text for text, label in spans)
    assert any(label is None and "Who are you?" in text for text, label in spans)


def test_a_broken_dataset_info_shows_its_error(tiny_model_dir, data_dir):
    import os

    from tuneforge.board.tabs.train import dataset_names, preview_data

    with open(os.path.join(data_dir, "dataset_info.json"), "w") as fh:
        fh.write("{ not json")
    names, error = dataset_names(data_dir)
    assert names == [] and "not valid JSON" in error
    spans, note = preview_data({"model_name_or_path": tiny_model_dir, "dataset": ["my_alpaca"], "dataset_dir": data_dir})
    assert spans == [] and "not valid JSON" in note


def test_the_estimate_gives_a_breakdown_and_a_verdict():
    from tuneforge.board.tabs.train import estimate_text

    small, fit = estimate_text({"per_device_train_batch_size": 1, "cutoff_len": 64})
    big, _ = estimate_text({"per_device_train_batch_size": 8, "cutoff_len": 64})
    assert "GiB" in small and "fits" in small and "activations" in small and "batch 1 x 64" in small
    assert small != big and "batch 8 x 64" in big
    assert "speed vs LoRA" in fit
    bad, _ = estimate_text({"model_name_or_path": "/nonexistent/model"})
    assert "estimate unavailable" in bad
