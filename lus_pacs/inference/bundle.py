"""Load a MONAI bundle from ``models/<name>/``: its network with trained weights, and its configs.

A bundle holds ``configs/metadata.json`` (MONAI's metadata: version, inputs, outputs, metrics),
``configs/inference.json`` (``network_def`` and the decision settings) and ``models/model.pt``
(a state dict, loaded with ``weights_only=True``) with ``models/model.pt.sha256``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from lus_pacs.domain import ModelInfo
from lus_pacs.errors import ModelError

METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
WEIGHTS = Path("models/model.pt")
CHECKSUM = Path("models/model.pt.sha256")
"""The SHA-256 of the weights, written with them: a bundle whose weights changed since (a
flipped byte loads as a valid state dict, one weight off by thousands) is refused at load."""
NETWORK_PACKAGE = "lus_pacs.families."
"""Where every ``network_def`` must point: a bundle names code of this package, nothing else."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the network in eval mode on the CPU, who it is, and its settings."""

    network: nn.Module
    model: ModelInfo
    config: Mapping[str, Any]
    """``configs/inference.json`` as written (``network_def``, thresholds, ...)."""
    metadata: Mapping[str, Any]
    """``configs/metadata.json`` as written."""


def load_bundle(folder: Path, expected: tuple[type[nn.Module], ...] = ()) -> Bundle:
    """Instantiate the bundle's ``network_def`` and load its weights.

    Parameters
    ----------
    folder:
        The bundle folder, e.g. ``models/b_lines``; its name becomes :attr:`ModelInfo.name`.
    expected:
        The network classes the caller can run; any module when empty.

    Raises
    ------
    ModelError
        A file is missing or unreadable, ``network_def`` is absent or points outside
        ``lus_pacs.families``, the network is not of an ``expected`` class, or the weights do not
        fit the network.
    """
    folder = Path(folder)
    for part in (METADATA, INFERENCE, WEIGHTS, CHECKSUM):
        if not (folder / part).is_file():
            raise ModelError(
                f"Model bundle {folder} is incomplete: {part} is missing. A bundle needs "
                f"{METADATA}, {INFERENCE}, {WEIGHTS} and {CHECKSUM} (weights without their "
                "checksum are not checked at all); train it again or restore the file."
            )
    metadata = read_json(folder / METADATA)
    config = read_json(folder / INFERENCE)

    network_def = config.get("network_def")
    target = network_def.get("_target_") if isinstance(network_def, Mapping) else None
    if (
        not isinstance(network_def, Mapping)
        or not isinstance(target, str)
        or not target.startswith(NETWORK_PACKAGE)
    ):
        raise ModelError(
            f"{folder / INFERENCE}: network_def must be a mapping whose _target_ names a class "
            f"in {NETWORK_PACKAGE[:-1]} (got {target!r})."
        )
    _check_network_def(network_def, folder, expected)
    for key in ("version", "name"):
        if not isinstance(metadata.get(key), str):
            raise ModelError(f"{folder / METADATA}: '{key}' must be a string.")

    parser = ConfigParser()
    parser.read_meta(dict(metadata))
    parser.read_config(dict(config))
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as exc:  # ConfigParser wraps import and argument errors alike
        raise ModelError(f"{folder / INFERENCE}: cannot build network_def ({exc})") from exc
    if not isinstance(network, nn.Module):
        raise ModelError(f"{folder / INFERENCE}: network_def {target} is not a torch module.")
    if expected and not isinstance(network, expected):
        raise ModelError(
            f"{folder / INFERENCE}: network_def is {type(network).__name__}, not "
            f"{' or '.join(t.__name__ for t in expected)}."
        )

    _check_checksum(folder)
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise ModelError(
            f"{folder / WEIGHTS}: not a state dict that fits {target} ({exc}). "
            "Were the weights trained with another network_def?"
        ) from exc
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            raise ModelError(f"{folder / WEIGHTS}: {key} holds NaN or infinite values.")
    network.eval()
    return Bundle(
        network=network,
        model=ModelInfo(
            name=folder.resolve().name, version=metadata["version"], title=metadata["name"]
        ),
        config=config,
        metadata=metadata,
    )


def _check_network_def(
    network_def: Mapping[str, Any], folder: Path, expected: tuple[type[nn.Module], ...]
) -> None:
    """Before anything of it is built: every ``_target_`` in it is a torch module class of
    :data:`NETWORK_PACKAGE` (of the ``expected`` ones at its top), and no value is an
    expression or a reference for MONAI's parser to run (``$...``, ``@...``, ``%...``). A
    prefix check let ``lus_pacs.families.<module>.torch.save`` through, and an expression
    ran whatever it said, both at load, before any check of what was built.

    Raises
    ------
    ModelError
        One is not.
    """
    where = folder / INFERENCE

    def visit(value: object, top: bool) -> None:
        if isinstance(value, str) and value[:1] in ("$", "@", "%"):
            raise ModelError(f"{where}: network_def holds {value[:40]!r}: no expressions.")
        if isinstance(value, Mapping):
            if "_target_" in value:
                cls = _network_class(value["_target_"], where)
                if top and expected and not issubclass(cls, expected):
                    raise ModelError(
                        f"{where}: network_def is {cls.__name__}, not "
                        f"{' or '.join(t.__name__ for t in expected)}."
                    )
            for key, item in value.items():
                if key != "_target_":
                    visit(item, False)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item, False)

    visit(network_def, True)


def _network_class(target: object, where: Path) -> type[nn.Module]:
    """The class ``target`` names: a torch module defined in :data:`NETWORK_PACKAGE`."""
    if not isinstance(target, str) or not target.startswith(NETWORK_PACKAGE):
        raise ModelError(f"{where}: _target_ {target!r} is not a class of {NETWORK_PACKAGE[:-1]}.")
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelError(f"{where}: _target_ {target!r} names nothing ({exc}).") from exc
    defined_here = str(getattr(found, "__module__", "")).startswith(NETWORK_PACKAGE)
    if not (isinstance(found, type) and issubclass(found, nn.Module) and defined_here):
        raise ModelError(f"{where}: _target_ {target!r} is not a torch module of this package.")
    return found


def probability_setting(bundle: Bundle, key: str, folder: Path) -> float:
    """The bundle's decision threshold ``key``, a probability: required (a missing one would
    run on a default without a word) and within [0, 1] (a threshold of 50 never decides
    positive, one of -0.5 always does).

    Raises
    ------
    ModelError
        It is missing, not a number or outside [0, 1].
    """
    value = bundle.config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ModelError(f"{folder / INFERENCE}: {key!r} must be a probability in [0, 1].")
    return float(value)


def count_setting(bundle: Bundle, key: str, folder: Path, minimum: int = 0) -> int:
    """The bundle's whole-number setting ``key`` (passes, frames): required (a missing
    ``mc_samples`` ran 40 passes, four times the 10 the settings document, without a word) and
    at least ``minimum``.

    Raises
    ------
    ModelError
        It is missing, not a whole number (``"ten"`` left as a bare ValueError and a traceback
        at start) or below ``minimum``.
    """
    value = bundle.config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{folder / INFERENCE}: {key!r} must be a whole number >= {minimum}.")
    return value


def weights_digest(path: Path) -> str:
    """The SHA-256 of a weights file, as ``models/model.pt.sha256`` holds it."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_checksum(text: str) -> str:
    """The digest a checksum file holds (``sha256sum`` writes the file name after it; capitals
    are the same digest)."""
    return text.split(maxsplit=1)[0].lower()


def _check_checksum(folder: Path) -> None:
    """Refuse weights that are not those written with the bundle (its checksum file)."""
    try:
        recorded = recorded_checksum((folder / CHECKSUM).read_text())
    except (OSError, IndexError, ValueError) as exc:  # ValueError: not text (UnicodeDecodeError)
        raise ModelError(f"{folder / CHECKSUM}: not readable ({exc})") from exc
    if weights_digest(folder / WEIGHTS) != recorded:
        raise ModelError(
            f"{folder / WEIGHTS}: its SHA-256 is not the one in {CHECKSUM}: the weights are "
            "damaged or were replaced; restore the bundle (git checkout models/) or train it again."
        )


BUNDLE_CONTENT = (INFERENCE, CHECKSUM)
"""What decides a bundle's findings beside its code and version: its settings and its weights
(by their checksum); not the metadata, whose measured figures change with the card."""


def bundle_content(folder: Path) -> str:
    """6 hex digits of the SHA-256 of the bundle's :data:`BUNDLE_CONTENT` ("" when it has none
    of them): a threshold changed, or weights retrained under the same version, give results
    of their own (the same UID with other content: a PACS keeps the first; the job store took
    the instance as made)."""
    digest = hashlib.sha256()
    found = False
    for name in BUNDLE_CONTENT:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        try:  # what it says, not how it is laid out (line endings, indentation, the file name
            # beside a checksum): the same bundle is the same identity on every machine
            canonical = (
                json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
                if name == INFERENCE
                else recorded_checksum(text)
            )
        except (ValueError, IndexError):  # not readable as it should be: loading says so
            canonical = text
        digest.update(str(name).encode() + b"\0" + canonical.encode() + b"\0")
        found = True
    return digest.hexdigest()[:6] if found else ""


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: must hold a JSON object, not {type(doc).__name__}.")
    return doc
