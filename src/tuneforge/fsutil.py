"""Writing folders so that a crash never leaves a half-written one behind."""

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import tempfile
import uuid

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which is not thread-safe)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def normal_mode(is_dir: bool = False) -> int:
    """The permissions a newly created file (or folder) normally gets; mkstemp/mkdtemp make private ones."""
    return (0o777 if is_dir else 0o666) & ~_umask()


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_folder(tmp: str, final: str) -> None:
    """Put `tmp` at `final`; an existing `final` is swapped out (atomically where the OS can, otherwise moved aside
    to a unique name just before the rename) and deleted only once the new folder is in place."""
    if not os.path.isdir(final):
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if not os.path.isdir(final):  # not a race with another writer: a real error
                raise
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return
    aside = os.path.join(os.path.dirname(final), f".old-{os.path.basename(final)}-{uuid.uuid4().hex[:12]}")
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)  # put the old one back
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final: str, public: bool = False, keep_existing: bool = False):
    """Yield a unique temporary folder beside `final`; on success it becomes `final`, on error it is removed.

    Args:
        final: the folder to (re)place.
        public: give the folder and its files the permissions a normal folder would have (mkdtemp's are private).
        keep_existing: for content-keyed caches: when `final` exists by the time we finish (another process wrote
            the same content first), keep it and drop ours. Otherwise an existing `final` is replaced, and it stays
            in place until the new one is complete.
    """
    final = os.path.abspath(final)  # normalised: `run/../cache` must not need `run` to exist
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(final)}-")
    try:
        yield tmp
        if public:
            os.chmod(tmp, normal_mode(is_dir=True))
            for name in os.listdir(tmp):
                path = os.path.join(tmp, name)
                os.chmod(path, normal_mode(os.path.isdir(path)))
        if keep_existing:
            try:
                os.rename(tmp, final)  # fails when another process's non-empty folder is already there
            except OSError:
                if not os.path.isdir(final):
                    raise
                log.debug("%s was written by another process meanwhile; keeping that copy", final)
        else:
            _replace_folder(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
