"""Config sections that methods bring along (e.g. `lora` -> LoraSection), registered by name."""

import dataclasses

METHOD_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Register a method's config section. Field names must be unique across section classes; one class
    may serve several methods (prefix and prompt tuning share theirs)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"section for `{name}` must be a dataclass (got {cls!r})")
    if name in METHOD_SECTIONS and METHOD_SECTIONS[name] is not cls:
        raise ValueError(f"a config section named `{name}` is already registered")
    METHOD_SECTIONS[name] = cls
