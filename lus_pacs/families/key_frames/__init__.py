"""Key frames and cine quality (paper 004)."""
