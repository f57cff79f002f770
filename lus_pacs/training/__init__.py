"""Training data for the clip-level models: real clips, simulated patients, and their splits."""
