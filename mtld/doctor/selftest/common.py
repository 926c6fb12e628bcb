"""Checks for every machine: the tiny model trains at micro-batch 2, 4 and 8 to the same weights,
and a run stopped by SIGTERM resumes from its checkpoint; both through real `python -m mtld.train`
children, as the daemon runs them."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from mtld.doctor.selftest.base import Context, Failed, Spec, require

SIZES = (2, 4, 8)
STEPS = 20  # optimizer steps of the size runs (effective batch 8)
EFFECTIVE = 8
POSITIVE = ["good", "great", "fine", "happy", "nice"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly"]
FILLER = ["the", "a", "cat", "dog", "sat", "on", "mat", "and", "then", "ran", "home", "today", "it", "was"]


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 14))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        out.append({"text": " ".join(words), "label": label})
    return out


def workspace(ctx: Context) -> dict[str, Any]:
    """The tiny model (dropout off, so the micro-batch cannot change the maths) and its data, built once."""
    if "workspace" in ctx.shared:
        return ctx.shared["workspace"]
    from mtld.train.tinymodel import build_tiny_model

    base = ctx.home / "selftest"
    data = base / "data/sentiment.train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    examples = rows(STEPS * EFFECTIVE)
    data.write_text("".join(json.dumps(r) + "\n" for r in examples))
    model = build_tiny_model(base / "tiny-bert", [r["text"] for r in examples], layers=2, hidden=32, heads=2,
                             vocab_size=200, max_position=128)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    ctx.shared["workspace"] = {"base": base, "model": model, "data": data}
    return ctx.shared["workspace"]


def job_spec(ctx: Context, *, epochs: int = 1, checkpoint_every: int = 1000, mixed_precision: str = "off"):
    from mtld.config.jobspec import spec_from_dict

    ws = workspace(ctx)
    raw = {"name": "selftest", "model": str(ws["model"]), "max_length": 32,
           "tasks": [{"name": "sentiment", "type": "classification", "train": str(ws["data"]), "labels": ["neg", "pos"]}],
           "train": {"epochs": epochs, "learning_rate": 1e-3, "effective_batch_size": EFFECTIVE,
                     "checkpoint_every": checkpoint_every, "seed": 7, "mixed_precision": mixed_precision}}
    return spec_from_dict(raw, base_dir=ws["base"], shown_as="selftest", check_data=False)


def run_dir(ctx: Context, spec: Any, micro_batch: int, name: str, *, device: str | None = None,
            progress_every_s: float = 60.0) -> Path:
    from mtld.runs.rundir import RunDir
    from mtld.runs.files import Launch

    rd = RunDir(workspace(ctx)["base"] / "runs" / name)
    rd.write_job(spec)
    rd.write_launch(Launch(micro_batch=micro_batch, device=device or ctx.shared.get("device", "auto"), threads=1,
                           progress_every_s=progress_every_s))
    return rd.path


def start_child(ctx: Context, path: Path) -> subprocess.Popen:
    env = {**os.environ, "MTLD_HOME": str(ctx.home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([ctx.python, "-m", "mtld.train", str(path)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish_child(child: subprocess.Popen, timeout_s: float = 300) -> tuple[int, str]:
    try:
        _, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate()
        return -9, f"timed out after {timeout_s:g} s"
    return child.returncode, (err or "")[-800:]


def result_of(path: Path) -> dict[str, Any]:
    return json.loads((path / "result.json").read_text())


def events(path: Path, name: str) -> list[dict[str, Any]]:
    log = path / "run.jsonl"
    if not log.exists():
        return []
    return [e for line in log.read_text().splitlines() if line.strip() and (e := json.loads(line))["event"] == name]


def final_weights(path: Path) -> dict[str, Any]:
    """The final model/ folder (encoder and heads): what the user gets."""
    import torch
    from safetensors.torch import load_file

    from mtld.train.layout import HEADS_FILE

    model = path / "model"
    weights = {f"encoder.{k}": v for k, v in load_file(model / "model.safetensors").items()}
    heads = torch.load(model / HEADS_FILE, map_location="cpu", weights_only=True)
    return weights | {f"heads.{k}": v for k, v in heads.items()}


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    if a.keys() != b.keys():
        raise Failed("the two models do not hold the same tensors", {"only_in_one": sorted(a.keys() ^ b.keys())[:5]})
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---------------------------------------------------------------- the checks


def check_sizes(ctx: Context) -> dict[str, Any]:
    """20 optimizer steps at each micro-batch; the same weights at the end (within a tolerance)."""
    spec = job_spec(ctx)
    figures: dict[str, Any] = {"steps": STEPS, "effective_batch": EFFECTIVE}
    runs = {b: run_dir(ctx, spec, b, f"b{b}") for b in SIZES}
    # --quick runs the three at once (the step times then share the CPU); the full test one by one
    started = time.monotonic()
    children = {b: start_child(ctx, runs[b]) for b in SIZES} if ctx.quick else {}
    figures["concurrent"] = ctx.quick
    for b, path in runs.items():
        if not ctx.quick:
            started = time.monotonic()
        code, err = finish_child(children.get(b) or start_child(ctx, path))
        require(code == 0, f"the run at micro-batch {b} exited {code}: {err.strip()[-300:]}", micro_batch=b)
        result = result_of(path)
        require(result["step"] == STEPS and result["micro_batch_end"] == b,
                f"the run at micro-batch {b} ended at step {result['step']} of {STEPS}, size {result['micro_batch_end']}")
        timing = result.get("timing", {}).get(str(b), {})
        figures[f"b{b}"] = {
            "wall_s": round(time.monotonic() - started, 2),
            "step_s": round(timing["seconds"] / timing["steps"], 4) if timing.get("steps") else None,
            "samples_per_s": result.get("samples_per_s"),
            "peak_memory_bytes": result.get("peak_memory_bytes"),
            "device": result.get("device"),
        }
    ctx.shared["size_runs"] = runs
    device = figures["b2"]["device"] or "cpu"
    tolerance = 2e-5 if device == "cpu" else 2e-3  # TF32 (CUDA) and Metal kernels reorder sums
    reference = final_weights(runs[8])
    for b in (2, 4):
        diff = max_difference(final_weights(runs[b]), reference)
        figures[f"max_abs_diff_b{b}_vs_b8"] = diff
        require(diff <= tolerance, f"after {STEPS} steps, micro-batch {b} and 8 differ by {diff:.2e} "
                f"(more than {tolerance:g})", **figures, tolerance=tolerance)
    figures["tolerance"] = tolerance
    return figures


def _stop_after_first_checkpoint(ctx: Context, path: Path) -> tuple[int, str, float]:
    """Start a child, SIGTERM it as soon as it logs its first checkpoint; (exit code, stderr, seconds to stop)."""
    child = start_child(ctx, path)
    deadline = time.monotonic() + 240
    while not events(path, "checkpoint.saved"):
        if child.poll() is not None:
            break
        require(time.monotonic() < deadline, "no checkpoint within 240 s")
        time.sleep(0.002)
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code, err = finish_child(child)
    return code, err, round(time.monotonic() - sent, 3)


def check_resume(ctx: Context) -> dict[str, Any]:
    """A real child stopped by SIGTERM after a checkpoint exits 75; started again it resumes and
    ends with exactly the weights of the uninterrupted run at the same micro-batch (the size check's
    run at 2, or, on a machine fast enough to finish 20 steps before the signal lands, a longer pair)."""
    for epochs in (1, 3):
        spec = job_spec(ctx, epochs=epochs, checkpoint_every=3)
        path = run_dir(ctx, spec, 2, f"resumed-{epochs}")
        reference = ctx.shared.get("size_runs", {}).get(2) if epochs == 1 else None
        whole = None
        if reference is None:
            reference = run_dir(ctx, spec, 2, f"whole-{epochs}")
            whole = start_child(ctx, reference)
        code, err, stop_s = _stop_after_first_checkpoint(ctx, path)
        if code != 0:
            break
        if whole is not None:
            finish_child(whole)  # finished before the signal: try again with a longer run
    stopped = result_of(path)
    figures: dict[str, Any] = {"stop_s": stop_s, "exit_code": code, "stopped_at_step": stopped.get("step"),
                               "total_steps": stopped.get("total_steps")}
    require(code == 75 and stopped["outcome"] == "interrupted",
            f"after SIGTERM the child exited {code} ({stopped.get('outcome')}), not 75 (interrupted): {err.strip()}",
            **figures)
    code, err = finish_child(start_child(ctx, path))
    resumed = result_of(path)
    started = events(path, "run.started")
    figures.update(resumed_from_step=started[-1].get("resumed_from_step") if started else None,
                   final_step=resumed.get("step"))
    require(code == 0 and resumed["step"] == resumed["total_steps"],
            f"the resumed child exited {code} at step {resumed.get('step')}: {err.strip()}", **figures)
    require((figures["resumed_from_step"] or 0) > 0, "the second start did not resume from the checkpoint", **figures)
    if whole is not None:
        code, err = finish_child(whole)
        require(code == 0, f"the uninterrupted reference run exited {code}: {err.strip()}", **figures)
    figures["max_abs_diff_vs_uninterrupted"] = diff = max_difference(final_weights(path), final_weights(reference))
    require(diff <= 1e-6, f"the resumed run ends {diff:.2e} away from the uninterrupted one", **figures)
    return figures


CHECKS = [
    Spec("train.micro_batch_independence", "everywhere",
         "mtld changes the micro-batch under memory pressure; if that changes the weights, a run that scaled "
         "down overnight is not the model you asked for.", check_sizes),
    Spec("train.sigterm_resume", "everywhere",
         "a run stopped at night (pause, logout, memory, a reinstall) would restart from scratch or from a broken "
         "checkpoint instead of where it stopped.", check_resume),
]
