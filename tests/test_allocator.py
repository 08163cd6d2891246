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
    expected = next((name for name in allocator.AUTO_ORDER if allocator.find_library(name)), "glibc")
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
    if allocator.find_library("mimalloc", allocator.search_dirs({"TUNEFORGE_ALLOCATOR_SYSTEM": "0"})):  # a pip-only machine
        res = subprocess.run([*cmd, "overwrite_output_dir=true"], env={**env, "TUNEFORGE_ALLOCATOR_SYSTEM": "0"},
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert json.loads((out / "all_results.json").read_text())["malloc"] == "mimalloc"
        assert "malloc: mimalloc (allocator: auto; no tcmalloc or jemalloc" in res.stderr


def test_auto_takes_mimalloc_when_no_system_malloc_is_there(libdir):
    env = allocator.plan("auto", {}, libdir("libmimalloc.so.3", "libmimalloc.so"), platform="linux")
    assert env[allocator.MARK] == "mimalloc" and env["LD_PRELOAD"].endswith("libmimalloc.so")
    dirs = libdir("libtcmalloc_minimal.so.4", "libjemalloc.so.2")  # the same folder now has all three
    assert allocator.plan("auto", {}, dirs, platform="linux")[allocator.MARK] == "tcmalloc"
    assert allocator.plan("mimalloc", {}, dirs, platform="linux")[allocator.MARK] == "mimalloc"


def test_the_pip_wheels_mimalloc_is_searched_and_system_folders_can_be_hidden():
    import sysconfig

    wheel = os.path.join(sysconfig.get_paths()["purelib"], "cmeel.prefix", "lib")
    assert wheel in allocator.search_dirs({})
    assert "/usr/lib/x86_64-linux-gnu" in allocator.search_dirs({})
    fresh = allocator.search_dirs({"TUNEFORGE_ALLOCATOR_SYSTEM": "0"})
    assert wheel in fresh and not set(fresh) & set(allocator.SYSTEM_DIRS)


def test_a_fresh_install_plans_mimalloc_from_the_wheel():
    if allocator.find_library("mimalloc", allocator.search_dirs({"TUNEFORGE_ALLOCATOR_SYSTEM": "0"})) is None:
        pytest.skip("cmeel-mimalloc is not installed in this environment")
    env = {"TUNEFORGE_ALLOCATOR_SYSTEM": "0"}
    assert allocator.plan("auto", env)["LD_PRELOAD"].endswith(".so") and allocator.planned("auto", env) == "mimalloc"
    assert allocator.planned("system", env) == "glibc"


def test_the_log_line_says_which_malloc_and_why(monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO, logger=allocator.log.name)
    monkeypatch.setattr(allocator, "active", lambda: "mimalloc")
    monkeypatch.setenv(allocator.MARK, "mimalloc")
    assert allocator.report("auto") == "mimalloc"
    assert "malloc: mimalloc (allocator: auto; no tcmalloc or jemalloc on this system" in caplog.text
    monkeypatch.setattr(allocator, "active", lambda: "glibc")
    monkeypatch.delenv(allocator.MARK)
    allocator.report("system")
    assert "malloc: glibc (allocator: system)" in caplog.text
