"""tuneforge: efficient fine-tuning of large language models."""

__version__ = "0.1.0"


class TuneforgeError(Exception):
    """A problem the user can fix (config, data, paths); printed without a traceback.

    `key` names the config key the problem is about, when there is one (the event log and the Board show it)."""

    key: str | None = None

    def __init__(self, message: str = "", key: str | None = None):
        super().__init__(message)
        if key is not None:
            self.key = key
