"""Consolidation (paper 002)."""
