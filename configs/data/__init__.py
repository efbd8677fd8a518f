"""Preprocessing configs: `base.py` holds every default; each source preset changes only what differs."""
