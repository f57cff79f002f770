"""lus-pacs: a DICOM node that runs lung-ultrasound AI models on cine loops.

Research software, not a medical device.
"""

__version__ = "0.1.0"
