"""Getting cine loops into the node: DICOM from scanners and archives, and exported videos."""
