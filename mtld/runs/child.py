"""How a launcher starts the run child: the module it runs, and what it says to it through the environment."""

# `python -m mtld.train RUN_DIR`, whoever runs it: a local child process, a Ray job, `mtld doctor`'s checks.
CHILD_MODULE = "mtld.train"

# "1": the OMP_NUM_THREADS the child sees is a cluster's allotment (Ray sets it from num_cpus), a ceiling for
# the thread governor (mtld.train.threads), not a pin.
ALLOTTED_ENV = "MTLD_THREADS_ALLOTTED"
