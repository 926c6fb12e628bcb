"""Start-up hook of every Python process a test starts with `tests.childhooks.hooks_env`.

Python imports `sitecustomize` at start-up from the first folder on sys.path
that has one (https://docs.python.org/3/library/site.html); the test puts
this folder first on PYTHONPATH. Unless MTLD_TEST_HOOKS is set this does
nothing. When it is, a finder waits for `mtld.train.step` to be imported and
patches it then (tests/childhooks/mtld_test_hooks.py), so only a run child, which
imports torch anyway, is changed: a daemon or a CLI process stays torch-free.
Standard library only, here and before the patch.
"""

import os

if os.environ.get("MTLD_TEST_HOOKS"):
    import mtld_test_hooks

    mtld_test_hooks.install_finder(os.environ["MTLD_TEST_HOOKS"])
