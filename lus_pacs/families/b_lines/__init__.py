"""B-lines (paper 001)."""
