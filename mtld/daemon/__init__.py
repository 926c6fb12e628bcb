"""The daemon process: one loop that runs the queue unattended (`mtld daemon`).

- `loop`: the `Daemon` (wait, then `tick(now)`) and `serve`.
- `ledger`: what happened to a run (its end recorded, runs with no live child settled): an object the daemon holds.
- `diskguard`: free space before a run and the daemon log's size.
- `pidfile`, `wakeup`: one daemon per state folder; what the loop waits on.

It never imports torch: each run is a child process (mtld.executor).
"""
