"""The model families the node can run: one entry each, in one registry.

The pipeline runs the enabled families in :meth:`Registry.ordered`; the settings check the
enabled names against it; the CLI builds the ``train``/``evaluate``/``pretrain`` commands from
it. Adding a family is a new package under ``lus_pacs/families/`` with a ``FAMILY`` value and
its line in :data:`FAMILIES`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lus_pacs.errors import ConfigError
from lus_pacs.families import (
    assessment,
    b_lines,
    consolidation,
    key_frames,
    segmentation,
    severity,
)
from lus_pacs.families.family import Family, Runner

__all__ = ["FAMILIES", "Family", "Registry", "Runner"]


@dataclass(frozen=True)
class Registry:
    """Model families in their registry order (the order of the result identity)."""

    families: tuple[Family, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.families]
        if len(set(names)) != len(names):
            raise ValueError(f"family names must be unique; got {names}")
        keys = [f.json_key for f in self.families]
        if len(set(keys)) != len(keys):
            raise ValueError(f"family record keys must be unique; got {keys}")
        for family in self.families:
            unknown = set(family.needs) - set(names)
            if unknown:
                raise ValueError(f"family {family.name} needs unknown families {sorted(unknown)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.families)

    def with_family(self, family: Family) -> Registry:
        """This registry and ``family`` after its others."""
        return Registry((*self.families, family))

    def get(self, name: str, where: str = "settings") -> Family:
        """The family called ``name``.

        Raises
        ------
        ConfigError
            No family has that name; the message says where the name came from and the
            closest known one.
        """
        for family in self.families:
            if family.name == name:
                return family
        close = difflib.get_close_matches(name, self.names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{where}: model family {name!r} is unknown; {hint}available families are "
            f"{', '.join(self.names)}."
        )

    def check(self, names: Iterable[str], where: str = "settings") -> None:
        """Raise :class:`ConfigError` for the first unknown name in ``names``."""
        for name in names:
            self.get(name, where)

    def ordered(self, names: Iterable[str], where: str = "settings") -> tuple[Family, ...]:
        """The families called ``names`` in the order they run: each after the enabled
        families it needs, otherwise in registry order."""
        enabled = {self.get(n, where).name for n in names}
        done: list[Family] = []
        pending = [f for f in self.families if f.name in enabled]
        gates = tuple(f.name for f in pending if f.gate)
        while pending:
            ran = {d.name for d in done}
            ready = [f for f in pending if all(n in ran for n in _after(f, gates) if n in enabled)]
            if not ready:
                raise ValueError(f"families {[f.name for f in pending]} need each other")
            done.append(ready[0])
            pending.remove(ready[0])
        return tuple(done)

    def record_types(self) -> Mapping[str, type]:
        """Each family's record key and the type of its part of a cine's record."""
        return {f.json_key: f.record_type for f in self.families}

    def identity(
        self, runners: Mapping[str, Runner], contents: Mapping[str, str] | None = None
    ) -> str:
        """The identity of a result: the loaded families' ``name@version``, with ``~`` and
        the digest of their bundle's content where ``contents`` has one
        (``b_lines@0.4.0~1a2b3c``), those without a setup first, then those with one
        (``segmentation@0.1.0~4d5e6f[best,mc10]``), each in registry order; "none" when no
        family runs. Result UIDs derive from it."""
        contents = contents or {}

        def named(n: str) -> str:
            return runners[n].identity(n, contents.get(n, ""))

        loaded = [f.name for f in self.families if f.name in runners]
        bare = [named(n) for n in loaded if not runners[n].setup]
        setup = [named(n) for n in loaded if runners[n].setup]
        return ",".join(bare + setup) or "none"


def _after(family: Family, gates: tuple[str, ...]) -> tuple[str, ...]:
    """The families ``family`` runs after: those it needs and, for a lung finding, the gates."""
    return (*family.needs, *(gates if family.lung_finding else ()))


FAMILIES = Registry(
    (
        b_lines.FAMILY,
        consolidation.FAMILY,
        severity.FAMILY,
        segmentation.FAMILY,
        key_frames.FAMILY,
        assessment.FAMILY,
    )
)
"""Every family the node ships."""
