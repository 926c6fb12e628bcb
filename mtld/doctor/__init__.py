"""`mtld doctor`: what mtld sees on this machine (`diagnose`), and `--selftest`: every check the machine allows."""
