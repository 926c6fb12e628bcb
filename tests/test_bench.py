"""The benchmark program: its table's verdicts, then a run end to end in a tiny configuration.

It checks the verdicts against the figures and the shape of the results, not
the targets themselves: meeting those is the benchmark's business (`make
bench`), not a timed test's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import TARGETS, main, markdown

VERDICTS = {"pass", "**miss**", "**miss** wall, pass CPU"}


def table_rows(table: str) -> dict[str, list[str]]:
    """'comparison | setting' -> the row's cells, for every row of the results table."""
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| comparison "):
            cells = [cell.strip() for cell in line.strip()[1:-1].split("|")]
            rows[f"{cells[0]} | {cells[1]}"] = cells
    return rows


def passing_results() -> dict:
    """Results in which every figure meets its target, with room to spare."""
    rate = {"samples_per_s": 100.0, "tokens_per_s": 4000.0}
    return {
        "machine": {"date": "2026-11-27 20:33 UTC", "cpu": "test CPU", "cores": 2, "torch_threads": 1, "python": "3.11",
                    "torch": "2", "transformers": "5", "load_before": [0.0, 0.0, 0.0], "load_after": [0.0, 0.0, 0.0]},
        "quick": True, "repeats": 1, "targets": TARGETS,
        "loop_overhead": {"tiny-4": {"model": "tiny", "micro_batch": 4, "mtld": rate, "bare": rate, "ratio": 1.1, "cpu_ratio": 1.1}},
        "trainer": {"same padding": {"micro_batch": 8, "mtld": rate, "trainer": rate, "ratio": 1.1, "cpu_ratio": 1.1},
                    "best options": {"micro_batch": 8, "mtld": rate, "trainer": rate, "ratio": 0.5, "cpu_ratio": 0.5}},
        "padding": {"micro_batch": 8, "bucketing": rate, "fixed_192": rate, "samples_ratio": 2.0, "tokens_ratio": 2.0},
        "guard": {"micro_batch": 8, "on": rate, "off": rate, "overhead_percent": 0.1, "cpu_overhead_percent": 0.1,
                  "advice_us": 1.0, "probe_read_ms": 0.1, "advice_percent_of_step": 0.1, "sampler_core_percent": 0.1},
        "daemon": {"idle_s": 30.0, "idle_cpu_percent": 0.1, "rss_mib": 50.0, "submit_to_start_ms": 50.0},
    }


LOOP, SAME, BEST = "mtld / bare PyTorch loop | tiny, micro-batch 4", "mtld / transformers Trainer | same padding, micro-batch 8", \
    "mtld / transformers Trainer | best options, micro-batch 8"
SAMPLES, TOKENS = "bucketing / fixed 192 | demo data, micro-batch 8, samples/s", "bucketing / fixed 192 | same, real tokens/s"
GUARD = "memory guard on / off | step time, micro-batch 8"
PARTS = "memory guard, its parts alone | advice() 1.0 µs per micro-step, sampler 0.1 ms a read"
IDLE_CPU, IDLE_RSS = "idle daemon | CPU over 30.0 s", "idle daemon | resident memory"


@pytest.mark.parametrize(
    ("section", "changes", "row", "verdict"),
    [
        (None, {}, LOOP, "pass"),
        ("loop_overhead.tiny-4", {"ratio": 0.97, "cpu_ratio": 0.97}, LOOP, "pass"),  # the target itself is met
        ("loop_overhead.tiny-4", {"ratio": 0.969, "cpu_ratio": 0.98}, LOOP, "**miss** wall, pass CPU"),
        ("loop_overhead.tiny-4", {"ratio": 0.969, "cpu_ratio": 0.969}, LOOP, "**miss**"),
        ("loop_overhead.tiny-4", {"ratio": 0.98, "cpu_ratio": 0.5}, LOOP, "pass"),  # the wall clock decides
        (None, {}, SAME, "pass"),
        ("trainer.same padding", {"ratio": 0.99, "cpu_ratio": 0.99}, SAME, "**miss**"),
        (None, {}, BEST, ""),  # no target: no verdict
        ("padding", {"samples_ratio": 1.29}, SAMPLES, "**miss**"),
        ("padding", {"tokens_ratio": 1.3}, TOKENS, "pass"),
        ("padding", {"tokens_ratio": 1.2}, TOKENS, "**miss**"),
        (None, {}, GUARD, "pass"),
        ("guard", {"overhead_percent": 1.0, "cpu_overhead_percent": 1.0}, GUARD, "pass"),
        ("guard", {"overhead_percent": 1.5, "cpu_overhead_percent": 0.5}, GUARD, "**miss** wall, pass CPU"),
        ("guard", {"overhead_percent": 1.5, "cpu_overhead_percent": 1.5}, GUARD, "**miss**"),
        (None, {}, PARTS, "pass"),
        ("guard", {"advice_percent_of_step": 0.6, "sampler_core_percent": 0.5}, PARTS, "**miss**"),  # 1.1 % together
        (None, {}, IDLE_CPU, "pass"),
        ("daemon", {"idle_cpu_percent": 1.0}, IDLE_CPU, "**miss**"),  # under 1 %, not up to it
        (None, {}, IDLE_RSS, "pass"),
        ("daemon", {"rss_mib": 95.0}, IDLE_RSS, "pass"),  # 99.6 MB
        ("daemon", {"rss_mib": 96.0}, IDLE_RSS, "**miss**"),  # 100.7 MB: the target is decimal megabytes
    ],
)
def test_each_row_of_the_table_is_marked_against_its_target(section, changes, row, verdict):
    results = passing_results()
    if section:
        part = results
        for key in section.split("."):
            part = part[key]
        part.update(changes)
    rows = table_rows(markdown(results))
    assert rows[row][-1] == verdict
    others = [cells[-1] for key, cells in rows.items() if key != row and key != BEST and not key.startswith("daemon |")]
    assert others and set(others) == {"pass"}  # one figure changed, one verdict changed


def test_the_table_has_one_row_per_figure_and_leaves_out_skipped_sections():
    results = passing_results()
    assert set(table_rows(markdown(results))) == {LOOP, SAME, BEST, SAMPLES, TOKENS, GUARD, PARTS, IDLE_CPU, IDLE_RSS,
                                                  "daemon | submit to start"}
    for skipped in ("trainer", "padding", "guard", "daemon"):
        del results[skipped]
    assert set(table_rows(markdown(results))) == {LOOP}


@pytest.mark.slow
def test_bench_quick_writes_results(tmp_path):
    # One torch thread: two would spin against the other xdist worker on a 2-core machine (a 3x slower test).
    main(["--quick", "--steps", "2", "--sizes", "4", "--out", str(tmp_path), "--idle-s", "0.5", "--skip", "trainer",
          "--threads", "1"])
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {"machine", "loop_overhead", "padding", "guard", "daemon", "targets"} <= results.keys()
    assert "trainer" not in results
    assert {"cpu", "cores", "torch", "transformers", "python", "date", "torch_threads"} <= results["machine"].keys()
    assert results["machine"]["torch_threads"] == 1
    assert [row["micro_batch"] for row in results["loop_overhead"].values()] == [4]
    assert all(row["ratio"] > 0 for row in results["loop_overhead"].values())
    assert results["padding"]["samples_ratio"] > 0 and results["padding"]["tokens_ratio"] > 0
    assert results["guard"]["advice_us"] > 0
    assert results["daemon"]["rss_mib"] > 0 and results["daemon"]["submit_to_start_ms"] is not None

    # The table says pass exactly where the figure in results.json meets its target.
    targets, (loop,), padding, guard, daemon = (results["targets"], results["loop_overhead"].values(), results["padding"],
                                                 results["guard"], results["daemon"])
    rows = table_rows((tmp_path / "results.md").read_text(encoding="utf-8"))
    meets = {
        f"mtld / bare PyTorch loop | {loop['model']}, micro-batch 4": loop["ratio"] >= targets["loop"],
        SAMPLES: padding["samples_ratio"] >= targets["padding"],
        TOKENS: padding["tokens_ratio"] >= targets["padding"],
        GUARD: guard["overhead_percent"] <= targets["guard_percent"],
        f"memory guard, its parts alone | advice() {guard['advice_us']} µs per micro-step, sampler "
        f"{guard['probe_read_ms']} ms a read": guard["advice_percent_of_step"] + guard["sampler_core_percent"] <= targets["guard_percent"],
        f"idle daemon | CPU over {daemon['idle_s']} s": daemon["idle_cpu_percent"] < targets["idle_cpu_percent"],
        IDLE_RSS: daemon["rss_mib"] * 2**20 < targets["idle_rss_mib"] * 10**6,
    }
    assert set(rows) == set(meets) | {"daemon | submit to start"}
    for row, met in meets.items():
        assert rows[row][-1] in VERDICTS and (rows[row][-1] == "pass") == met, (row, rows[row])


def test_the_real_encoder_rows_pass_only_when_every_micro_batch_meets_the_target():
    from bench.real import CONTENDERS, RATIOS
    from bench.real import markdown as real_markdown

    def real(mtld_over_bare_at_4: float) -> dict:
        rows = {}
        for b in (2, 4):
            ratios = {label: {"ratio": 1.05, "cpu_ratio": 1.05, "target": target} for label, _, _, target in RATIOS}
            if b == 4:
                ratios[RATIOS[0][0]] = {"ratio": mtld_over_bare_at_4, "cpu_ratio": mtld_over_bare_at_4, "target": 0.98}
            profile = {"mtld_python_percent": 0.3, "mtld_python_ms_per_step": 4.0, "backward_percent": 50.0,
                       "optimizer_and_clip_percent": 2.0}
            rows[f"b{b}"] = {"micro_batch": b, "ratios": ratios, "profile": profile,
                             **{n: {"samples_per_s": 5.0} for n in CONTENDERS}}
        return {"model": "m", "max_length": 192, "effective_batch": 8, "steps": 4, "rows": rows}

    def verdict(lines: list[str], label: str) -> str:
        (line,) = [x for x in lines if x.startswith(f"| {label} |")]
        return line.strip()[1:-1].split("|")[-1].strip()

    assert verdict(real_markdown(real(0.98), None), RATIOS[0][0]) == "pass"
    assert verdict(real_markdown(real(0.97), None), RATIOS[0][0]) == "**miss**"
    trainer_row = next(label for label, _, _, target in RATIOS if label.startswith("mtld / Trainer, same padding"))
    assert verdict(real_markdown(real(0.97), None), trainer_row) == "pass"
    assert real_markdown({"skipped": "the package is not installed"}, None)[-1].endswith("skipped (the package is not installed).")


def test_collect_gathers_each_fresh_process_benchmark_into_one_section_of_results_md(tmp_path):
    """bench.collect writes one row per comparison from the JSON files the benchmarks left, between markers
    that a second run replaces (not appends); a benchmark that has not run yet has no row."""
    import shutil

    from bench.collect import BEGIN, END, write

    bench = Path(__file__).resolve().parents[1] / "bench"
    for name in ("fresh", "dropout"):
        shutil.copy(bench / f"{name}.json", tmp_path)
    (tmp_path / "results.md").write_text("# the loop\n\n| a | b |\n")
    write(tmp_path)
    first = (tmp_path / "results.md").read_text()
    assert first.startswith("# the loop\n\n| a | b |\n\n" + BEGIN) and first.rstrip().endswith(END)
    rows = [line for line in first.splitlines() if line.startswith("| ") and "`bench." in line]
    fresh = json.loads((bench / "fresh.json").read_text())
    assert len([r for r in rows if "`bench.fresh`" in r]) == len(fresh["rows"])
    assert any(f"Trainer {fresh['rows'][0]['mtld/trainer']:.3f}" in r for r in rows)
    assert not any("`bench.e2e`" in r or "`bench.compile`" in r for r in rows)
    shutil.copy(bench / "compile.json", tmp_path)
    write(tmp_path)
    second = (tmp_path / "results.md").read_text()
    assert second.count(BEGIN) == 1 and "`bench.compile`" in second and second.startswith("# the loop\n")


@pytest.mark.parametrize("module", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py")
                                          if p.stem not in ("__init__", "__main__")))
def test_every_benchmark_module_imports(module):
    """The benchmarks run on demand (`make bench`), never in CI: a renamed function they import would break
    them unseen (bench.estimate_accuracy's once did, for two days). Importing each catches that."""
    import importlib

    loaded = importlib.import_module(f"bench.{module}")
    if 'if __name__ == "__main__":' in Path(loaded.__file__).read_text():  # a program: its entry point is there
        assert callable(loaded.main)
