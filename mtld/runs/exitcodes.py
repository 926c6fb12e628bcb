"""Exit statuses of the training child: the one table. The child exits with `CODE[outcome]`; the daemon
judges a run by the status (mtld.decide.policy.after_exit)."""

from typing import Literal

OK = 0
FAILED = 1  # anything unexpected: `run.failed` in the run log carries the traceback
BAD_INPUT = 2  # the job cannot run as written: retrying will not help
INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; resume later
OUT_OF_MEMORY = 76  # out of memory even at the smallest micro-batch; checkpoint kept
DISK_FULL = 74  # EX_IOERR: not enough free space for the rest of the run; checkpointed if one fit
NOT_VISIBLE = 66  # EX_NOINPUT: the run folder does not exist, or cannot be written, where the run started
SUPERSEDED = 73  # EX_CANTCREAT: a newer attempt owns the run folder (its generation); this one wrote nothing more

# What an attempt's result.json says it did, and the status it exits with.
Outcome = Literal["succeeded", "bad_input", "interrupted", "out_of_memory", "disk_full", "failed"]
CODE: dict[Outcome, int] = {
    "succeeded": OK,
    "failed": FAILED,
    "bad_input": BAD_INPUT,
    "interrupted": INTERRUPTED,
    "out_of_memory": OUT_OF_MEMORY,
    "disk_full": DISK_FULL,
}
