"""Data errors name the dataset, the row and the field."""

from tuneforge import TuneforgeError


class DataError(TuneforgeError):
    """A dataset problem the user can fix (registry entry, file, column or row)."""

    key = "dataset"
