"""Preload tcmalloc, jemalloc or mimalloc for training: faster steps and a lower peak RSS than glibc's malloc.

With packing, tensor sizes change every step (a packed row is as long as its examples). glibc's malloc
cannot reuse the freed blocks for the next, differently sized step and its heap fragments: on SmolLM2
LoRA the live set peaks at ~1.9 GiB while the process peaks at ~2.6 GiB. tcmalloc and jemalloc keep
size-classed free lists per thread and return memory without that growth (measured in README: 2.00 GiB,
and ~15% more tokens/s with tcmalloc).

A malloc can only be swapped before the process starts (LD_PRELOAD), so the `tuneforge` command
re-executes itself once with the library preloaded. `allocator: auto` takes tcmalloc or jemalloc when the system
has one (Debian/Ubuntu: `apt install libtcmalloc-minimal4` or `libjemalloc2`; conda: `gperftools`), else mimalloc,
which `pip install tuneforge` brings (the cmeel-mimalloc wheel puts libmimalloc.so under site-packages/cmeel.prefix/lib).
"""

import glob
import logging
import os
import sys

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

CHOICES = ("auto", "tcmalloc", "jemalloc", "mimalloc", "system")
AUTO_ORDER = ("tcmalloc", "jemalloc", "mimalloc")
LIBRARIES = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",), "mimalloc": ("mimalloc",)}
INSTALL_HINT = {"tcmalloc": "apt install libtcmalloc-minimal4 (Debian/Ubuntu) or conda install gperftools",
                "jemalloc": "apt install libjemalloc2 (Debian/Ubuntu) or conda install jemalloc",
                "mimalloc": "pip install cmeel-mimalloc"}
MARK = "TUNEFORGE_ALLOCATOR_REEXEC"  # set in the re-executed process so it never re-executes again
KNOWN_MALLOCS = ("tcmalloc", "jemalloc", "mimalloc")
# TUNEFORGE_ALLOCATOR_SYSTEM=0 hides the system's library folders: a machine where only pip installed anything
SYSTEM_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib", "/lib64")


def search_dirs(env: dict[str, str] | None = None) -> list[str]:
    """Library folders to look in: the environment's own (with the cmeel wheels' prefix, where cmeel-mimalloc puts
    libmimalloc.so) first, then the system's unless TUNEFORGE_ALLOCATOR_SYSTEM=0."""
    import sysconfig

    env = os.environ if env is None else env
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sysconfig.get_paths()["purelib"], "cmeel.prefix", "lib")]
    if env.get("CONDA_PREFIX"):
        dirs.append(os.path.join(env["CONDA_PREFIX"], "lib"))
    if env.get("TUNEFORGE_ALLOCATOR_SYSTEM", "1") != "0":
        dirs += SYSTEM_DIRS
    return dirs


def find_library(name: str, dirs: list[str] | None = None) -> str | None:
    """Path of the shared library for `name` (tcmalloc, jemalloc or mimalloc), or None if none is installed."""
    for stem in LIBRARIES[name]:
        for folder in dirs if dirs is not None else search_dirs():
            hits = sorted(glob.glob(os.path.join(folder, f"lib{stem}.so*")), key=len)
            if hits:
                return hits[0]
    return None


def requested(flat: dict) -> str:
    """The `allocator` a run asks for, read from flat config keys without loading the full config."""
    value = str(flat.get("allocator", "auto") or "auto").strip().lower()
    return value if value in CHOICES else "auto"  # an invalid value is reported by config validation


def plan(choice: str, env: dict[str, str], dirs: list[str] | None = None, platform: str = sys.platform) -> dict[str, str] | None:
    """The environment to re-execute with, or None to keep this process as it is.

    Raises:
        TuneforgeError: an explicitly requested library is not installed.
    """
    if choice == "system" or not platform.startswith("linux") or env.get(MARK):
        return None
    preloaded = env.get("LD_PRELOAD", "")
    if any(name in preloaded for name in KNOWN_MALLOCS):
        return None  # the user chose one already
    names = AUTO_ORDER if choice == "auto" else (choice,)
    for name in names:
        path = find_library(name, dirs if dirs is not None else search_dirs(env))
        if path:
            new = dict(env)
            new["LD_PRELOAD"] = f"{path}:{preloaded}" if preloaded else path
            new[MARK] = name
            # gperftools prints a line for every allocation over 1 GiB (a large model's embedding); silence it
            new.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
            return new
    if choice != "auto":
        raise TuneforgeError(f"allocator: {choice} was requested but lib{LIBRARIES[choice][0]}.so is not installed; "
                             f"install it ({INSTALL_HINT[choice]}) or set allocator: auto (use it when present) or system")
    return None


def reexec(argv: list[str], choice: str) -> None:
    """Replace this process with `python -m tuneforge.cli argv...` under the planned allocator (returns if none)."""
    env = plan(choice, dict(os.environ))
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "tuneforge.cli", *argv], env)


def active() -> str:
    """The malloc this process runs on: tcmalloc, jemalloc, mimalloc, glibc, or unknown off Linux."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            maps = fh.read()
    except OSError:
        return "unknown"
    for name in KNOWN_MALLOCS:
        if f"lib{name}" in maps:
            return name
    return "glibc"


def report(choice: str = "auto") -> str:
    """Log which malloc this run uses and why, with a hint when a faster one could be installed; returns its name."""
    name, chosen = active(), os.environ.get(MARK)
    if chosen and choice == "auto" and name == "mimalloc":
        why = "allocator: auto; no tcmalloc or jemalloc on this system, so mimalloc from the cmeel-mimalloc wheel"
    elif chosen:
        why = f"allocator: {choice}, preloaded"
    elif name != "glibc":
        why = "preloaded by LD_PRELOAD"
    elif choice == "system":
        why = "allocator: system"
    elif sys.platform.startswith("linux"):
        why = (f"no tcmalloc, jemalloc or mimalloc found; {INSTALL_HINT['mimalloc']} or {INSTALL_HINT['tcmalloc']} "
               f"for a lower peak RSS")
    else:
        why = "LD_PRELOAD is a Linux mechanism"
    log.info("malloc: %s (%s)", name, why)
    return name


def planned(choice: str = "auto", env: dict[str, str] | None = None) -> str:
    """The malloc a `tuneforge train` started now with `allocator: choice` would run on: the name `active()` would
    report there (the estimator budgets for it). Never raises: an unavailable explicit choice plans glibc."""
    env = dict(os.environ) if env is None else env
    if env.get(MARK):
        return active()
    preloaded = env.get("LD_PRELOAD", "")
    for name in KNOWN_MALLOCS:
        if name in preloaded:
            return name
    try:
        new = plan(choice, env)
    except TuneforgeError:
        return "glibc"
    return new[MARK] if new else "glibc"
