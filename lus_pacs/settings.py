"""The node's settings: one validated model, loaded once by the CLI and passed down."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lus_pacs.errors import ConfigError


class ZoneRule(BaseModel):
    """Finds the lung zone in a DICOM attribute: ``pattern`` is a regular expression whose
    named group ``zone`` is the zone label (R1..R7, L1..L7)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attribute: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if "(?P<zone>" not in value:
            raise ValueError(f"zone pattern {value!r} needs a named group (?P<zone>...)")
        re.compile(value)
        return value


DEFAULT_ZONE_RULES = (
    ZoneRule(attribute="SeriesDescription", pattern=r"(?i)\b(?:zone\s*)?(?P<zone>[RL]\d{1,2})\b"),
    ZoneRule(attribute="ImageComments", pattern=r"(?i)\b(?:zone\s*)?(?P<zone>[RL]\d{1,2})\b"),
)


class Settings(BaseModel):
    """Everything configurable about the node; defaults run it with no file at all."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Path("lus-pacs-data")
    pocus_dir: Path = Path("../shared/data/pocus")
    zone_rules: tuple[ZoneRule, ...] = Field(default=DEFAULT_ZONE_RULES)
    default_fps: float = Field(default=30.0, gt=0)
    """Frame rate assumed for a cine whose file gives none."""


def load_settings(path: Path | None) -> Settings:
    """Settings from a TOML file, or the embedded defaults when ``path`` is None."""
    if path is None:
        return Settings()
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        return Settings(**raw)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"{path}: invalid configuration: {exc}") from exc
