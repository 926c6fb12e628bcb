"""Start-up hook of every Python process a test starts with `tests.childhooks.hooks_env`.

Python imports `sitecustomize` at start-up from the first folder on sys.path
that has one (https://docs.python.org/3/library/site.html); the test puts
this folder first on PYTHONPATH. Unless MTLD_TEST_HOOKS is set this does
nothing but run the sitecustomize it shadows, if the installation has one.
When it is set, a finder waits for `mtld.train.step` to be imported and
patches it then (tests/childhooks/mtld_test_hooks.py), so only a run child,
which imports torch anyway, is changed: a daemon or a CLI process stays
torch-free. Standard library only, here and before the patch.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _run_the_shadowed_one() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_run_the_shadowed_one()
if os.environ.get("MTLD_TEST_HOOKS"):
    import mtld_test_hooks

    mtld_test_hooks.install_finder(os.environ["MTLD_TEST_HOOKS"])
