"""tuneforge: efficient fine-tuning of large language models."""

__version__ = "0.1.0"


class TuneforgeError(Exception):
    """A problem the user can fix (config, data, paths); printed without a traceback."""
