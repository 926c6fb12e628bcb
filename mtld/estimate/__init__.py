"""Estimates from what was measured: a family's history (the store and stored probes), row counts,
and `mtld estimate JOB.toml`. The arithmetic is mtld.decide.runtime's (pure).
"""
