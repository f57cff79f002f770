"""What a model family tells the node about itself: one :class:`Family` value per family.

A family joins the node with one such value in :mod:`lus_pacs.families.registry`. Nothing here
imports torch: a family's ``load`` imports its network and inference code when it is called, so
the registry can be read by the settings and the CLI without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lus_pacs.domain import Cine, KeyFrame

if TYPE_CHECKING:
    from lus_pacs.settings import Settings


@dataclass(frozen=True)
class Found:
    """What the families that ran before one found in the same cine."""

    by_family: Mapping[str, object]
    """Findings by family name."""
    key_frames: tuple[KeyFrame, ...]
    """The key frames chosen so far, in the node's order."""


@dataclass(frozen=True, eq=False)
class Runner:
    """A family's bundle, loaded once, ready to run on cines."""

    version: str
    """Its part of the result identity: ``name@version``."""
    predict: Callable[[Cine, Found], object]
    """The family's findings for one cine, given what the families it needs found."""
    setup: str = ""
    """Settings that change its result objects (frames segmented, dropout passes): part of the
    result identity, as ``name@version[setup]``."""

    def identity(self, name: str, content: str = "") -> str:
        """``name@version``, with ``~`` and the digest of the bundle's ``content`` where there
        is one, then ``[setup]`` where there is one."""
        digest = f"~{content}" if content else ""
        return f"{name}@{self.version}{digest}" + (f"[{self.setup}]" if self.setup else "")


def _no_key_frames(findings: Any) -> Sequence[KeyFrame]:
    return ()


@dataclass(frozen=True)
class Family:
    """One model family: its name, how to load and run its bundle, and its record.

    Parameters
    ----------
    name:
        The family's name in the settings (``models``), its bundle folder under ``models_dir``
        and its key among a cine's findings.
    load:
        ``(bundle folder, settings) -> Runner``; imports the heavy code when called.
    findings:
        The type ``Runner.predict`` returns.
    record:
        ``findings -> value``: the family's part of the cine's JSON record, a frozen dataclass
        whose fields are the JSON keys (:mod:`lus_pacs.records` writes and reads it).
    record_type:
        The type ``record`` returns, for the reader.
    record_key:
        The key of that part in the record; the family's name when empty.
    needs:
        Families whose findings it reads when they run: they run before it. None of them is
        required; a family must cope with their absence.
    key_frames:
        ``findings -> key frames`` the family proposes; the node lists every family's proposals
        in :class:`~lus_pacs.domain.KeyFrameReason` order.
    lung_finding:
        Its findings are about the lung: it does not run on a cine that a ``gate`` family
        found not assessable, and runs after every gate.
    temporal:
        Its model reads a loop (motion, or a clip score pooled over frames): on a still image
        (a gate found it not assessable for that reason alone) it does not run, while the
        lung families that read single frames do.
    gate:
        Its findings say whether the lung families may read the cine (an ``assessable``
        property).
    commands:
        The module whose ``COMMANDS`` maps ``train``/``evaluate``/``pretrain`` to the family's
        Typer commands; None for a family without any.
    """

    name: str
    load: Callable[[Path, Settings], Runner]
    findings: type
    record: Callable[[Any], object]
    record_type: type
    record_key: str = ""
    needs: tuple[str, ...] = ()
    key_frames: Callable[[Any], Sequence[KeyFrame]] = field(default=_no_key_frames)
    commands: str | None = None
    lung_finding: bool = False
    temporal: bool = False
    gate: bool = False

    @property
    def json_key(self) -> str:
        return self.record_key or self.name
