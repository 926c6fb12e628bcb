"""Pure decisions: records and numbers in, a decision out. No clock, no file, no OS, no torch.

- `policy`: what a run's exit means, the micro-batch across attempts and runs, the pressure check before a run.
- `family`: a job's family key and the size its next attempt starts at.
- `precision`: which mixed precision a job trains in on a device (the machine's facts are passed in).
- `runtime`: the runtime and memory model (time per step ≈ a + b × padded tokens).
- `schedule`: run windows and recurring jobs (APScheduler's calendar arithmetic).

An import-linter contract (pyproject.toml) keeps this package free of I/O.
"""
