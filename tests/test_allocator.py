"""The malloc preload: which library is found, the environment a re-execution gets, and a real `tuneforge train`."""

import json
import os
import subprocess
import sys

import pytest

from tuneforge import TuneforgeError
from tuneforge.train import allocator


@pytest.fixture
def libdir(tmp_path):
    def make(*names):
        for name in names:
            (tmp_path / name).write_bytes(b"")
        return [str(tmp_path)]
    return make


def test_finds_tcmalloc_minimal_first_and_nothing_in_an_empty_folder(libdir):
    dirs = libdir("libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libjemalloc.so.2")
    assert allocator.find_library("tcmalloc", dirs).endswith("libtcmalloc_minimal.so.4")
    assert allocator.find_library("jemalloc", dirs).endswith("libjemalloc.so.2")
    assert allocator.find_library("tcmalloc", [dirs[0] + "/missing"]) is None


def test_auto_preloads_tcmalloc_and_keeps_the_users_preload(libdir):
    dirs = libdir("libtcmalloc_minimal.so.4", "libjemalloc.so.2")
    env = allocator.plan("auto", {"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"}, dirs, platform="linux")
    assert env["LD_PRELOAD"] == f"{dirs[0]}/libtcmalloc_minimal.so.4:/opt/other.so"
    assert env[allocator.MARK] == "tcmalloc" and env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


def test_auto_falls_back_to_jemalloc_and_then_to_nothing(libdir):
    assert allocator.plan("auto", {}, libdir("libjemalloc.so.2"), platform="linux")[allocator.MARK] == "jemalloc"
    assert allocator.plan("auto", {}, [], platform="linux") is None


@pytest.mark.parametrize("env,choice,platform", [
    ({}, "system", "linux"),                                   # the user keeps glibc
    ({allocator.MARK: "tcmalloc"}, "auto", "linux"),           # already re-executed once: never loop
    ({"LD_PRELOAD": "/x/libjemalloc.so.2"}, "tcmalloc", "linux"),  # the user preloaded a malloc already
    ({}, "auto", "darwin"),                                    # LD_PRELOAD is a Linux mechanism
])
def test_no_reexecution(libdir, env, choice, platform):
    assert allocator.plan(choice, env, libdir("libtcmalloc_minimal.so.4"), platform=platform) is None


def test_a_requested_library_that_is_missing_names_the_package():
    with pytest.raises(TuneforgeError, match="allocator: jemalloc .*libjemalloc2"):
        allocator.plan("jemalloc", {}, [], platform="linux")


def test_requested_reads_flat_keys():
    assert allocator.requested({}) == "auto"
    assert allocator.requested({"allocator": "System"}) == "system"
    assert allocator.requested({"allocator": "bogus"}) == "auto"  # config validation reports it


def test_cli_train_runs_under_the_preloaded_malloc(tiny_model_dir, data_dir, tmp_path):
    """`python -m tuneforge.cli train` re-executes itself with tcmalloc/jemalloc when the system has one."""
    expected = next((name for name in ("tcmalloc", "jemalloc") if allocator.find_library(name)), "glibc")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.MARK)}
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca",
           f"dataset_dir={data_dir}", f"output_dir={out}", "template=chatml", "cutoff_len=32", "max_steps=2",
           "per_device_train_batch_size=2", "save_strategy=no", "plot_loss=false", f"cache_dir={tmp_path / 'cache'}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "all_results.json").read_text())["malloc"] == expected
    res = subprocess.run([*cmd, "allocator=system", "overwrite_output_dir=true"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "all_results.json").read_text())["malloc"] == "glibc"
