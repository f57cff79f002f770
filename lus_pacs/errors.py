"""The exceptions users can act on: each message names the file, the attribute and the fix."""


class LusPacsError(Exception):
    """Base class of every error lus-pacs raises on purpose."""


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
    """

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"export to {destination!r} failed: {reason}")
        self.destination = destination
        self.reason = reason


class ModelError(LusPacsError):
    """A model bundle under ``models/`` is incomplete or does not fit the code that loads it."""
