"""`python -P -m mtld.train RUN_DIR`: the child process the daemon starts for each attempt."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

from mtld.runs import exitcodes
from mtld.train import run_attempt


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write("usage: python -m mtld.train RUN_DIR\n")
        return 2
    run_dir = Path(args[0])
    if not run_dir.is_dir():  # the launcher made it: a worker of a cluster that does not share the folder
        sys.stderr.write(f"mtld: the run folder {run_dir} does not exist on {socket.gethostname()}: the executor's "
                         "run folders must be on storage every machine that runs them sees at the same path "
                         "(mtld doctor checks it)\n")
        return exitcodes.NOT_VISIBLE
    if problem := unwritable(run_dir):  # a worker that sees the folder read-only: say so now, not at a checkpoint
        sys.stderr.write(f"mtld: the run folder {run_dir} cannot be written on {socket.gethostname()} ({problem}): "
                         "the executor's run folders must be on storage every machine that runs them can write "
                         "at the same path (mtld doctor checks it)\n")
        return exitcodes.NOT_VISIBLE
    os.umask(0o077)  # whatever this run creates is user-only (mtld.disk also sets modes explicitly)
    return run_attempt(run_dir)


def unwritable(run_dir: Path) -> str | None:
    """Why nothing can be written in `run_dir` here (a read-only mount, no permission), or None: a file is
    made and removed: only a real write tells (access(2), NOTES: on NFS the server maps ids and decides)."""
    try:
        fd, path = tempfile.mkstemp(dir=run_dir, prefix=".mtld-write-check-")
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(path)
    return None


if __name__ == "__main__":
    code = main()
    # Everything is on disk by now (log lines are single write(2)s, result.json
    # and checkpoints are fsynced and renamed). Skip the interpreter's teardown:
    # unloading torch and transformers costs 1-3 s per run for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
