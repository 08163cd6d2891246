"""The RunConfig: typed sections, YAML + `key=value` loading, did-you-mean errors."""

from tuneforge.config.errors import ConfigError, did_you_mean
from tuneforge.config.fields import field
from tuneforge.config.loader import RunConfig, from_flat, load, parse_overrides, read_yaml
from tuneforge.config.registry import register_section

__all__ = ["ConfigError", "RunConfig", "did_you_mean", "field", "from_flat", "load", "parse_overrides", "read_yaml", "register_section"]
