"""Exit statuses of the training child. The daemon judges a run by these."""

OK = 0
BAD_INPUT = 2  # the job cannot run as written: retrying will not help
INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; resume later
OUT_OF_MEMORY = 76  # out of memory even at the smallest micro-batch; checkpoint kept
DISK_FULL = 74  # EX_IOERR: not enough free space for the rest of the run; checkpointed if one fit
NOT_VISIBLE = 66  # EX_NOINPUT: the run folder does not exist where the run started (a worker that cannot see it)

NAMES = {OK: "succeeded", BAD_INPUT: "bad_input", INTERRUPTED: "interrupted", OUT_OF_MEMORY: "out_of_memory",
         DISK_FULL: "disk_full", NOT_VISIBLE: "not_visible"}
