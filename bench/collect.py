"""The fresh-process benchmarks' headline rows, gathered into bench/results.md.

    python -m bench.collect [--out bench]

`make bench` runs this last. Each benchmark that puts mtld against another way
of doing the same work in fresh processes writes its own OUT/NAME.json (with
the machine and its load before and after); this reads those that exist and
writes one table between the markers below in OUT/results.md (appended the
first time), one row per comparison, each with its own date and load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- fresh processes: python -m bench.collect -->", "<!-- /fresh processes -->"


def _when(results: dict[str, Any]) -> str:
    m = results["machine"]
    after = results.get("load_after") or m.get("load_after")
    return f"{m['date']}, load {_load(m.get('load_before'))} before, {_load(after)} after"


def _load(figures: list[float] | None) -> str:
    return "?" if not figures else " ".join(f"{x:.1f}" for x in figures)


def fresh_rows(r: dict[str, Any]) -> list[str]:
    """Item 1: mtld against a bare loop with the same maths, a bare loop and the Trainer, as users run them."""
    rows = []
    for row in r["rows"]:
        p = "fp32" if row["precision"] == "off" else row["precision"]
        rows.append(f"| training rate, all-MiniLM-L6-v2, {p}, micro-batch 8, {r['steps']} steps (`bench.fresh`) | "
                    f"{row['mtld']['samples_per_s']} samples/s | bare loop, same maths {row['mtld/bare_same']:.3f}; "
                    f"bare loop {row['mtld/bare']:.3f}; Trainer {row['mtld/trainer']:.3f} | {_when(r)} |")
    return rows


def dropout_rows(r: dict[str, Any]) -> list[str]:
    """Item 2: no attention dropout against the checkpoint's, speed and the scores per seed."""
    rows = [f"| no attention dropout / the model's 0.1, {'fp32' if s['precision'] == 'off' else s['precision']} "
            f"(`bench.dropout`) | {s['none']} samples/s | {s['ratio']:.3f} | {_when(r)} |" for s in r["speed"]]
    for name, label in (("real", "all-MiniLM-L6-v2, 4 tasks"), ("demo", "the demo job")):
        if name in r:
            none = " / ".join(f"{x['score']:.3f}" for x in r[name]["none"])
            model = " / ".join(f"{x['score']:.3f}" for x in r[name]["model"])
            rows.append(f"| final score per seed {r[name]['seeds']}, {label} (`bench.dropout`) | none {none} | "
                        f"the model's {model} | {_when(r)} |")
    return rows


def compile_rows(r: dict[str, Any]) -> list[str]:
    """Item 4: what compiling pays once warm and costs up front: the figures `compile = "auto"` decides on."""
    rows = [f"| compiled / eager, {row['label']}, {row['steps']} steps (`bench.compile`, one process) | "
            f"{row['compiled']['samples_per_s']} samples/s | whole run {row['whole_run_ratio']:.3f}, after warm-up "
            f"{row['after_warm_up_ratio']:.3f}, first step {row['compiled']['first_step_s']:.1f} s | {_when(r)} |"
            for row in r["rows"]]
    if fresh := r.get("fresh"):
        for name, cache in (("compiled_cold", "an empty"), ("compiled_warm", "a filled")):
            rows.append(f"| compiled / eager, {fresh['label']}, {fresh['steps']} steps, {cache} inductor cache "
                        f"(`bench.compile`, fresh processes) | {fresh[name]['step_s']:.3f} s a step | "
                        f"{fresh[name]['speedup']:.3f}x once warm, {fresh[name]['cost_s']:.1f} s up front | {_when(r)} |")
    return rows


def e2e_rows(r: dict[str, Any]) -> list[str]:
    """Item 5: from `mtld submit` to model/ written, against a Trainer script doing the same job."""
    which = {"mtld": "a family's first run", "mtld_next": "the family's next run"}
    return [f"| submit to model/, all-MiniLM-L6-v2, 3 tasks, {r['epochs']} epochs with evaluations, {which[kind]} "
            f"(`bench.e2e`) | {r[kind]['model_s']:.0f} s | Trainer script {r['trainer']['model_s']:.0f} s: "
            f"{r[f'trainer/{kind}']:.2f}x mtld's time | {_when(r)} |" for kind in which if f"trainer/{kind}" in r]


SOURCES = (("fresh", fresh_rows), ("dropout", dropout_rows), ("compile", compile_rows), ("e2e", e2e_rows))


def table(out: Path) -> str:
    lines = [BEGIN, "", "Side by side in alternating rounds, medians (`bench.fresh`, `bench.dropout` and `bench.e2e` run "
             "each contender in its own fresh process, `bench.compile` both in one and then in fresh processes; each "
             "benchmark's own page in "
             "this folder has its full table, its rounds and its method):", "",
             "| comparison | mtld | ratio (mtld's side first) | measured |", "|---|---|---|---|"]
    for name, rows in SOURCES:
        path = out / f"{name}.json"
        if path.exists():
            lines += rows(json.loads(path.read_text()))
    return "\n".join([*lines, "", END]) + "\n"


def write(out: Path) -> str:
    """Replace the section between the markers in OUT/results.md, or append it."""
    page = out / "results.md"
    text = page.read_text() if page.exists() else ""
    section = table(out)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    page.write_text(text)
    return section


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    print(write(parser.parse_args().out))


if __name__ == "__main__":
    main()
