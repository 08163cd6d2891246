"""DeepSpeed ZeRO-2 and ZeRO-3 with CPU offload, from the shipped examples/deepspeed JSONs, on the CPU (gloo,
DS_ACCELERATOR=cpu set by the launcher): two processes train like one process with the same global batch.

Slow: the first run compiles DeepSpeed's cpu_adam and shared-memory ops (~150 s idle, ~6 min on a loaded 2-core
machine); they are cached under the tuneforge cache (TORCH_EXTENSIONS_DIR=<cache>/torch_extensions), so later runs
take ~40 s each."""

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_scale_launch import TOLERANCE, losses, run, train_cmd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")]


@pytest.mark.parametrize("config", ["ds_z2_offload.json", "ds_z3_offload.json"])
def test_deepspeed_zero_with_cpu_offload_trains_like_one_process(config, tiny_model_dir, data_dir, tmp_path):
    from tuneforge.data.cache import cache_root

    shared = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(cache_root(None), "torch_extensions")}
    one, two = tmp_path / "one", tmp_path / "two"
    rc, log1, _ = run(train_cmd(tiny_model_dir, data_dir, one, "per_device_train_batch_size=4"))
    assert rc == 0, log1[-3000:]
    rc, log2, wall = run(train_cmd(tiny_model_dir, data_dir, two, "per_device_train_batch_size=2", "nproc_per_node=2",
                                   f"deepspeed={os.path.join(ROOT, 'examples', 'deepspeed', config)}"), timeout=900, **shared)
    assert rc == 0, log2[-4000:]
    a, b = losses(one), losses(two)
    assert len(b) == 4 and max(abs(x - y) for x, y in zip(a, b)) < TOLERANCE, (a, b)
    assert os.path.isfile(two / "adapter_model.safetensors") and os.path.isfile(two / "all_results.json")
    if "z3" in config:  # parameters partitioned: the fused paths stepped aside
        assert "the fused LoRA forward: parameters are sharded" in log2
