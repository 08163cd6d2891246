"""The RunConfig: typed sections, YAML + `key=value` loading, validation as (key, message) problems, resolution of
derived values, and `describe()` of every key for help texts and the Board."""

from tuneforge.config.errors import ConfigError, Problem, did_you_mean
from tuneforge.config.fields import field
from tuneforge.config.loader import RunConfig, from_flat, load, parse_overrides, read_yaml
from tuneforge.config.registry import register_section
from tuneforge.config.resolve import resolve
from tuneforge.config.describe import KeyInfo, describe

__all__ = ["ConfigError", "KeyInfo", "Problem", "RunConfig", "describe", "did_you_mean", "field", "from_flat", "load",
           "parse_overrides", "read_yaml", "register_section", "resolve"]
