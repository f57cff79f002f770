"""Frame and clip severity scores (paper 003)."""
