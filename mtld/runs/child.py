"""How a launcher starts the run child: the module it runs, and what it says to it through the environment."""

# `python -P -m mtld.train RUN_DIR`, whoever runs it: a local child process, a Ray job, `mtld doctor`'s checks.
CHILD_MODULE = "mtld.train"
# -P (Python 3.11+): the working folder does not go first on sys.path, so a daemon started in a folder that
# holds a `mtld/` folder (a checkout, a copy) still runs the installed mtld (docs.python.org, "Command line
# and environment": -P, PYTHONSAFEPATH). PYTHONPATH still applies.
SAFE_PATH = "-P"

# "1": the OMP_NUM_THREADS the child sees is a cluster's allotment (Ray sets it from num_cpus), a ceiling for
# the thread governor (mtld.train.threads), not a pin.
ALLOTTED_ENV = "MTLD_THREADS_ALLOTTED"


def module_argv(python: str, module: str, *args: str) -> list[str]:
    """The command line that runs `module` with `python`, never from the working folder's code."""
    return [python, SAFE_PATH, "-m", module, *args]
