"""The exceptions users can act on: each message names the file, the attribute and the fix."""


class LusPacsError(Exception):
    """Base class of every error lus-pacs raises on purpose."""


def describe(exc: BaseException) -> str:
    """An exception as a reason for a person: its message, or its kind when it has none."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


class ConfigError(LusPacsError):
    """The node's configuration is invalid."""


class UnreadableImageError(LusPacsError):
    """A DICOM instance or video cannot be read as an ultrasound cine.

    Parameters
    ----------
    source:
        The file name or SOP Instance UID of the rejected input.
    reason:
        Why it was rejected, in words an engineer can act on.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class StageError(LusPacsError):
    """A stage of processing one cine failed on it (not a refusal of the input as such): the
    cine gets a failure record naming the stage, the others go on.

    Parameters
    ----------
    source:
        The file name or SOP Instance UID of the cine.
    stage:
        ``read``, ``analyse`` or ``write``.
    reason:
        What failed, never empty.
    """

    def __init__(self, source: str, stage: str, reason: str) -> None:
        super().__init__(f"{source}: {stage} failed: {reason}")
        self.source = source
        self.stage = stage
        self.reason = reason


def failure_stage(exc: BaseException) -> str:
    """The stage a failure of one cine happened at, for its failure record."""
    if isinstance(exc, StageError):
        return exc.stage
    if isinstance(exc, UnreadableImageError):
        return "decode"
    if isinstance(exc, EncodeError):
        return "encode"
    return "unexpected"


class AnnotationError(LusPacsError):
    """An annotation file (VIA, LabelMe, frame-score CSV) is malformed."""


class ExportError(LusPacsError):
    """Results were not delivered to a destination (PACS, archive).

    Parameters
    ----------
    destination:
        The destination's configured name.
    reason:
        What failed and where (AE title, host:port, status, SOP Instance UID).
    unavailable:
        The destination as a whole did not take the attempt (not reachable, the association
        rejected, HTTP 401, 403, 404 or a server error): every delivery to it would fail alike,
        so the node holds them all and tries one at a time until it answers.
    final:
        The same attempt cannot succeed later (an object larger than the server accepts): not
        retried until an operator runs ``lus-pacs retry``.
    """

    def __init__(
        self, destination: str, reason: str, *, unavailable: bool = False, final: bool = False
    ) -> None:
        super().__init__(f"export to {destination!r} failed: {reason}")
        self.destination = destination
        self.reason = reason
        self.unavailable = unavailable
        self.final = final


class EncodeError(LusPacsError):
    """A result object could not be made from a cine's findings (the encoder refused them);
    the message names the object kind, the source instance and the reason."""


class ModelError(LusPacsError):
    """A model bundle under ``models/`` is incomplete or does not fit the code that loads it."""


class ArchiveError(LusPacsError):
    """An archive could not be queried, or a study could not be brought from it completely.

    Parameters
    ----------
    archive:
        The archive's name (``ArchiveSource.name``, e.g. ``dimse:PACS@10.0.0.5:104``).
    reason:
        What failed: the request or DIMSE service, the status or HTTP code, and how to fix it.
    study:
        The Study Instance UID concerned; empty for a query over the whole archive.
    """

    def __init__(self, archive: str, reason: str, *, study: str = "") -> None:
        where = f"{archive}, study {study}" if study else archive
        super().__init__(f"archive {where}: {reason}")
        self.archive = archive
        self.reason = reason
        self.study = study
