"""Writing folders so that a crash never leaves a half-written one behind."""

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_folder(final: str, public: bool = False):
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename, on error it is removed.

    Args:
        final: the folder to (re)place.
        public: give the folder and its files the permissions a normal folder would have (mkdtemp's are private).
    """
    final = os.path.abspath(final)  # normalised: `run/../cache` must not need `run` to exist
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        yield tmp
        if public:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
            for name in os.listdir(tmp):
                os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
