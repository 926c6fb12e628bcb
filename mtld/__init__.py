"""mtld: an overnight training daemon for multi-task BERT-style encoders."""

__version__ = "0.1.0"
