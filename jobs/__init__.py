"""Thin entry points: ``python -m jobs.NAME`` locally or through ``ray job submit``."""
