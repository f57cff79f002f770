"""Batch re-processing of archives: the node's stages over folders, PACS and DICOMweb."""
