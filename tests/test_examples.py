"""Every recipe under examples/ loads and passes the pre-run checks as it is; the LLaMA-Factory one runs."""

import glob
import logging
import os

import pytest

from tuneforge import config, preflight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_loads_and_preflights(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config.load(path)
    preflight.check(cfg)
    with open(path) as fh:
        assert fh.readline().startswith(f"# tuneforge train examples/{os.path.basename(path)}")


def test_llamafactory_yaml_runs_unchanged_but_for_the_model(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """The LLaMA-Factory recipe and its dataset_info.json work as they are (model, output and length shortened)."""
    from tuneforge.cli import main

    monkeypatch.chdir(ROOT)
    with caplog.at_level(logging.WARNING):
        rc = main(["train", os.path.join(ROOT, "examples", "llamafactory_lora_sft.yaml"), f"model_name_or_path={tiny_model_dir}",
                   f"output_dir={tmp_path}/out", "max_steps=2", "template=chatml", f"cache_dir={tmp_path}/cache"])
    assert rc == 0
    assert os.path.isfile(tmp_path / "out" / "adapter_model.safetensors")
