"""lus-pacs: a DICOM node that runs lung-ultrasound AI models on cine loops.

Research software, not a medical device.
"""

__version__ = "0.1.0"

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The log lines of ``lus-pacs`` (and of the node's encoding processes)."""
