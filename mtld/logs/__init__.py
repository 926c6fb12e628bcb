"""Structured logs: JSON lines (`events`: writing and reading events) and their files (`files`: rotation, cursors)."""
