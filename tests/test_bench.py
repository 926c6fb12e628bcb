"""The benchmark program runs end to end in a tiny configuration and writes well-formed results.

It checks the shape of the figures, not the targets: those are the
benchmark's business (`make bench`), not a timed test's.
"""

from __future__ import annotations

import json

from bench.run import main


def test_bench_quick_writes_results(tmp_path):
    main(["--quick", "--steps", "2", "--sizes", "4", "--out", str(tmp_path), "--idle-s", "0.5", "--skip", "trainer"])
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {"machine", "loop_overhead", "padding", "guard", "daemon", "targets"} <= results.keys()
    assert {"cpu", "cores", "torch", "transformers", "python", "date", "torch_threads"} <= results["machine"].keys()
    assert [row["micro_batch"] for row in results["loop_overhead"].values()] == [4]
    assert all(row["ratio"] > 0 for row in results["loop_overhead"].values())
    assert results["padding"]["samples_ratio"] > 0 and results["padding"]["tokens_ratio"] > 0
    assert results["guard"]["advice_us"] > 0
    assert results["daemon"]["rss_mib"] > 0 and results["daemon"]["submit_to_start_ms"] is not None
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "mtld / bare PyTorch loop" in table
    assert "| pass |" in table or "**miss**" in table
