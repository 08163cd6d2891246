"""Config errors that collect every problem as a (key, message) pair and name the key and the fix."""

import difflib
import re
from typing import NamedTuple

from tuneforge import TuneforgeError


class Problem(NamedTuple):
    """One config problem: the key it is about (None when it concerns no single key) and the message."""

    key: str | None
    message: str

    def __str__(self) -> str:
        return self.message


_LEADING_KEY = re.compile(r"^`?([a-z][a-z0-9_]*)`?(?:[ .:]|$)")


def as_problem(item, known_keys=None) -> Problem:
    """A Problem from a (key, message) pair or a message; for a bare message the key is its first word when that
    word is a config key (`lora_rank must be > 0` -> lora_rank)."""
    if isinstance(item, Problem):
        return item
    if isinstance(item, tuple):
        return Problem(item[0], str(item[1]))
    text = str(item)
    m = _LEADING_KEY.match(text)
    if not m:
        return Problem(None, text)
    if known_keys is None:
        known_keys = _all_keys()
    return Problem(m.group(1) if m.group(1) in known_keys else None, text)


def _all_keys() -> set[str]:
    try:
        from tuneforge.config.loader import known_keys

        return known_keys()
    except Exception:  # an error while reporting an error must not hide the first one
        return set()


class ConfigError(TuneforgeError):
    """One or more config problems; `problems` holds Problem(key, message) pairs, `key` the first problem's key."""

    def __init__(self, problems, known_keys=None):
        self.problems = [as_problem(p, known_keys) for p in problems]
        if len(self.problems) == 1:
            msg = f"config error: {self.problems[0].message}"
        else:
            msg = "config errors:\n" + "\n".join(f"  - {p.message}" for p in self.problems)
        super().__init__(msg, key=next((p.key for p in self.problems if p.key), None))

    @property
    def messages(self) -> list[str]:
        return [p.message for p in self.problems]


def did_you_mean(word: str, choices, cutoff: float = 0.6) -> str:
    """`; did you mean `x`?` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"; did you mean `{close[0]}`?" if close else ""
