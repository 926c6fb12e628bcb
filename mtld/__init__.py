"""mtld: an overnight training daemon for multi-task BERT-style encoders."""

__version__ = "0.1.0"

# The micro-batch sizes mtld chooses from, smallest first: every module and the store's schema use this.
MICRO_BATCH_SIZES = (2, 4, 8)
