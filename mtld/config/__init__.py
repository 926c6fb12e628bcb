"""What people write: the settings (`config.toml` and `MTLD_*`), the job file, durations, task data rows.

Read by every process; imports nothing of mtld's above it.
"""
