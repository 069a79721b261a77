"""Fit: per-tile internal-learning cloud removal (network, losses, schedule, metrics, evaluation)."""
