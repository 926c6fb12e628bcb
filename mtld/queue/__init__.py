"""What users do to the queue, through the CLI: submit, cancel, retry, change, clean, and `mtld status`'s view.

It writes only through mtld.store and never imports torch.
"""
