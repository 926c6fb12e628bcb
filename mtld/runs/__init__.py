"""The run-folder contract between whoever launches a run (the daemon, `mtld train`, a Ray job) and the child.

- `files`: the typed `launch.json` and `result.json` (and `Figures`, what an attempt measured).
- `rundir`: the folder itself: who made it, where each file lives, atomic writes.
- `exitcodes`: what the child's exit status means.
"""
