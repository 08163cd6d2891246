"""atomic_folder's two modes (a content-keyed cache keeps the copy already there; a replacement swaps the folder
without a moment where it is missing) and unique temporary names for files written in place."""

import os
import threading

import pytest

from tuneforge import fsutil
from tuneforge.fsutil import atomic_folder


def write(folder, name, text):
    with open(os.path.join(folder, name), "w") as fh:
        fh.write(text)


def read(folder, name="f.txt"):
    with open(os.path.join(folder, name)) as fh:
        return fh.read()


def leftovers(parent, final="target"):
    return sorted(n for n in os.listdir(parent) if n != final)


def test_new_folder_appears_whole(tmp_path):
    final = tmp_path / "target"
    with atomic_folder(str(final)) as tmp:
        write(tmp, "f.txt", "new")
        assert not final.exists()
    assert read(final) == "new" and leftovers(tmp_path) == []


def test_cache_mode_keeps_the_copy_another_process_wrote_first(tmp_path):
    final = tmp_path / "target"
    with atomic_folder(str(final), keep_existing=True) as tmp:
        write(tmp, "f.txt", "ours")
        final.mkdir()  # another process finished the same entry while we were writing
        write(str(final), "f.txt", "theirs")
    assert read(final) == "theirs" and leftovers(tmp_path) == []


def test_cache_mode_writes_when_nothing_is_there(tmp_path):
    final = tmp_path / "target"
    with atomic_folder(str(final), keep_existing=True) as tmp:
        write(tmp, "f.txt", "ours")
    assert read(final) == "ours" and leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "move-aside"])
def test_replacement_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path, monkeypatch, exchange):
    if exchange and not _has_renameat2():
        pytest.skip("no renameat2 here")
    real_exchange, swapped = fsutil._exchange, []
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: swapped.append(exchange and real_exchange(a, b)) or swapped[-1])
    final = tmp_path / "target"
    final.mkdir()
    write(str(final), "f.txt", "old")
    write(str(final), "stale.txt", "only in the old one")
    seen_when_deleting = []
    real_rmtree = fsutil.shutil.rmtree

    def rmtree(path, *a, **kw):
        seen_when_deleting.append(read(final))  # whatever is deleted, the target is there with the new content
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(fsutil.shutil, "rmtree", rmtree)
    with atomic_folder(str(final)) as tmp:
        write(tmp, "f.txt", "new")
        assert read(final) == "old"  # the old folder stays while the new one is written
    assert read(final) == "new" and not (final / "stale.txt").exists()
    assert seen_when_deleting and set(seen_when_deleting) == {"new"}
    assert leftovers(tmp_path) == []  # neither the temporary folder nor the old one is left behind
    assert swapped == [exchange]  # the path under test was taken


def _has_renameat2() -> bool:
    import ctypes

    try:
        ctypes.CDLL(None).renameat2
    except (OSError, AttributeError):
        return False
    return True


def test_failed_replacement_leaves_the_old_folder_untouched(tmp_path):
    final = tmp_path / "target"
    final.mkdir()
    write(str(final), "f.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_folder(str(final)) as tmp:
            write(tmp, "f.txt", "half")
            raise RuntimeError("crash while writing")
    assert read(final) == "old" and leftovers(tmp_path) == []


def test_replacement_never_leaves_the_target_missing(tmp_path):
    """A reader polling the folder during many replacements always finds it (atomic where renameat2 exists)."""
    if not _has_renameat2():
        pytest.skip("without renameat2 the move-aside fallback has a moment between two renames")
    final = tmp_path / "target"
    with atomic_folder(str(final)) as tmp:
        write(tmp, "f.txt", "0")
    stop, missing = threading.Event(), []

    def poll():
        while not stop.is_set():
            if not os.path.isfile(final / "f.txt"):
                missing.append(True)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(1, 60):
            with atomic_folder(str(final)) as tmp:
                write(tmp, "f.txt", str(i))
    finally:
        stop.set()
        reader.join()
    assert not missing and read(final) == "59" and leftovers(tmp_path) == []


def test_temporary_folder_names_are_unique(tmp_path):
    with atomic_folder(str(tmp_path / "target")) as a, atomic_folder(str(tmp_path / "target")) as b:
        assert a != b and os.path.dirname(a) == os.path.dirname(b) == str(tmp_path)


def test_concurrent_atomic_writes_of_one_file_do_not_collide(tmp_path):
    from tuneforge.train.artifacts import _atomic_write

    path = str(tmp_path / "all_results.json")
    start, errors = threading.Barrier(4), []

    def writer(n):
        start.wait()
        try:
            for i in range(100):
                _atomic_write(path, f"{n}-{i}\n" * 50)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = open(path).read()
    assert text in {f"{n}-99\n" * 50 for n in range(4)}  # one writer's whole last file, never a mix
    assert os.listdir(tmp_path) == ["all_results.json"]  # no temporary files left
    assert oct(os.stat(path).st_mode & 0o777) == oct(fsutil.normal_mode())


def test_loss_plot_is_written_through_a_unique_temporary_file(tmp_path):
    import json

    from tuneforge.train import artifacts
    from tuneforge.train.callbacks import LOG_FILE

    with open(tmp_path / LOG_FILE, "w") as fh:
        for step in range(1, 4):
            fh.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
    path = artifacts.plot_loss(str(tmp_path))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == sorted([LOG_FILE, artifacts.PLOT_FILE])
