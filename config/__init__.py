"""Picks the settings class (embedded default, testing or production) from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from config.settings import CONFIG_CLASSES
from config.settings import BaseConfig
from config.settings import ConfigError


def load_config(environ: Mapping[str, str], instance_path: Path) -> BaseConfig:
    """Build the settings object named by ``KEYWARD_ENV`` (default ``embedded``).

    Raises ConfigError for an unknown mode or, in production, for missing variables.
    """
    mode = (environ.get("KEYWARD_ENV") or "embedded").strip().lower()
    try:
        config_class = CONFIG_CLASSES[mode]
    except KeyError:
        raise ConfigError(
            f"KEYWARD_ENV must be one of {', '.join(CONFIG_CLASSES)}, not {mode!r}"
        ) from None
    return config_class(environ, instance_path)


__all__ = ["ConfigError", "load_config"]
