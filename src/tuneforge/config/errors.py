"""Config errors that collect every problem and name the key and the fix."""

import difflib

from tuneforge import TuneforgeError


class ConfigError(TuneforgeError):
    """One or more config problems; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = f"config error: {self.problems[0]}"
        else:
            msg = "config errors:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


def did_you_mean(word: str, choices, cutoff: float = 0.6) -> str:
    """`; did you mean `x`?` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"; did you mean `{close[0]}`?" if close else ""
