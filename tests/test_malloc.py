"""The run child fixes glibc's mmap and trim thresholds (mtld.train.device.tune_malloc), so that a step's
large buffers come back from the heap instead of fresh, zeroed pages every time. Real processes, real
page faults: the same loop of 48 MB allocations with and without it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOOP = """
import json, resource, sys
import torch
from mtld.train.device import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    t = torch.empty(12 << 20, dtype=torch.float32)  # 48 MB, as a word-embedding gradient on a BERT vocabulary
    t.fill_(1.0)
    del t
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_are_reused_from_the_heap_once_malloc_is_tuned():
    default, tuned = _faults("default"), _faults("tuned")
    assert tuned["tuned"] is True
    pages = (48 << 20) // 4096
    assert default["faults"] > 10 * pages  # every allocation: fresh pages from mmap
    # mostly the first one: the heap keeps them (a loaded machine's reclaim can take some back meanwhile)
    assert tuned["faults"] < default["faults"] / 2
