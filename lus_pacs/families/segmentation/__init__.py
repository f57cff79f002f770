"""Severity-score segmentation (paper 003)."""
