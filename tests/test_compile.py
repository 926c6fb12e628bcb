"""train.compile (mtld.decide.compile): true and false as asked; "auto" compiles only a run whose eager training
time is well past the break-even, by the family's own figures once it has them; the run child and `mtld estimate`
decide it the same way, and say so."""

from __future__ import annotations

import json
import math

import pytest

from mtld.decide import runtime
from mtld.decide.compile import (DEFAULT, MARGIN, CompileFigures, compile_for_plan, decide_compile,
                                 eager_train_seconds, family_figures)
from mtld.runs.figures import Figures

PAYS = CompileFigures(cost_s=84.0, speedup=1.48, source="a machine where it pays")  # bench/compile.md, 2026-12-01
BREAK_EVEN = PAYS.cost_s / (1 - 1 / PAYS.speedup)  # 84 / (1 - 1/1.48): about 259 s
FAMILY = CompileFigures(cost_s=10.0, speedup=2.0, source="this family's")  # break-even 20 s


def test_the_default_figures_are_the_fresh_process_measurement_and_never_compile_on_auto():
    assert (DEFAULT.cost_s, DEFAULT.speedup) == (46.5, 0.894)  # bench/compile.md: MiniLM, fresh processes
    assert DEFAULT.break_even_s == math.inf  # no faster: only a family's own runs can say it pays
    assert PAYS.break_even_s == pytest.approx(BREAK_EVEN) and 250 < BREAK_EVEN < 270
    assert CompileFigures(10.0, 1.0, "").break_even_s == math.inf == CompileFigures(10.0, 0.9, "").break_even_s


@pytest.mark.parametrize(("setting", "device", "eager_s", "figures", "compiles", "why"), [
    (True, "cpu", None, DEFAULT, True, "compile = true (asked for)"),
    (True, "mps", 10.0, DEFAULT, True, "compile = true (asked for)"),  # asked for: MPS too
    (False, "cpu", 1e6, PAYS, False, "compile = false (asked for)"),
    ("auto", "cpu", None, PAYS, False, "no measured time yet"),  # a family with no history
    ("auto", "cpu", 1e6, DEFAULT, False, "no faster (0.89x, bench/compile.md"),  # no family figures: never
    ("auto", "cuda", 1e6, DEFAULT, False, "no faster"),
    ("auto", "cpu", 60.0, PAYS, False, "a short run"),
    ("auto", "cpu", BREAK_EVEN * 2, PAYS, False, "a short run"),  # past the break-even, not past the margin
    ("auto", "cpu", BREAK_EVEN * MARGIN * 0.99, PAYS, False, "a short run"),
    ("auto", "cpu", BREAK_EVEN * MARGIN * 1.01, PAYS, True, "break-even 4.3 min"),
    ("auto", "cuda", 3600.0, PAYS, True, "a machine where it pays"),
    ("auto", "mps", 1e6, PAYS, False, "not on mps"),  # inductor's MPS backend is a prototype
    ("auto", "cpu", 120.0, PAYS, False, "a short run"),
    ("auto", "cpu", 120.0, FAMILY, True, "this family's"),  # the family's own figures move the break-even
    ("auto", "cpu", 50.0, FAMILY, False, "a short run"),  # 3 x 20 s
    ("auto", "cpu", 1e6, CompileFigures(30.0, 0.95, "this family's"), False, "no faster"),
])
def test_decide_compile(setting, device, eager_s, figures, compiles, why):
    decided, reason = decide_compile(setting, device_type=device, eager_train_s=eager_s, figures=figures)
    assert decided is compiles
    assert why in reason


def test_an_unknown_setting_is_an_error():
    with pytest.raises(ValueError, match="auto, true or false"):
        decide_compile("yes", device_type="cpu", eager_train_s=1.0)  # type: ignore[arg-type]


def timing(step_s: float, warmup_extra_s: float, *, steps: int = 100, tokens_per_step: int = 500) -> dict:
    """One size's result.json timing: `steps` steady steps of `step_s` each (proportional to the tokens),
    plus 3 warm-up steps that took `warmup_extra_s` more than the steady line says."""
    x = steps * tokens_per_step
    per_token = step_s / tokens_per_step
    warm_x = 3 * tokens_per_step
    warm_y = 3 * step_s + warmup_extra_s
    return {"8": {"steps": steps + 3, "padded_tokens": x + warm_x, "seconds": steps * step_s + warm_y,
                  "tokens_squared": steps * tokens_per_step ** 2 + 3 * tokens_per_step ** 2,
                  "tokens_seconds": x * tokens_per_step * per_token + warm_x * (warm_y / 3),
                  "warmup": {"steps": 3, "padded_tokens": warm_x, "seconds": warm_y,
                             "tokens_squared": 3 * tokens_per_step ** 2, "tokens_seconds": warm_x * (warm_y / 3)}}}


def record(step_s: float, warmup_extra_s: float = 0.5, *, compiled: bool = False, probe: bool = False):
    return runtime.run_record(Figures(timing=timing(step_s, warmup_extra_s), compiled=compiled, probe=probe))


def test_a_familys_figures_come_from_its_compiled_and_eager_runs():
    eager, compiled = record(1.0, 0.5), record(0.5, 30.5, compiled=True)
    assert family_figures([eager]) == DEFAULT  # no compiled run yet
    assert family_figures([compiled]) == DEFAULT  # nothing eager to compare with
    figures = family_figures([eager, compiled])
    assert figures.speedup == pytest.approx(2.0)
    assert figures.cost_s == pytest.approx(30.0)  # the compiled warm-up's excess over the eager one's
    assert figures.break_even_s == pytest.approx(60.0)
    assert "1 compiled and 1 eager run at micro-batch 8" in figures.source
    probe = record(1.0, 0.5, probe=True)  # a probe is an eager measurement
    assert family_figures([probe, compiled]).speedup == pytest.approx(2.0)


def test_the_eager_estimate_uses_eager_runs_and_scales_compiled_ones():
    plan = runtime.PlanSummary(steps=1000, effective_batch=8, padded_tokens={8: 1000 * 500}, evaluations=0,
                               eval_tokens=0, saves=1)
    eager, compiled = record(1.0, 0.5), record(0.5, 30.5, compiled=True)
    assert eager_train_seconds(plan, [eager, compiled], 8) == pytest.approx(1000 * 1.0 + 0.5)
    # only compiled runs in the history: their steady time times the speedup, so "auto" keeps compiling
    assert eager_train_seconds(plan, [compiled], 8, FAMILY) == pytest.approx(1000 * 0.5 * 2.0)
    assert eager_train_seconds(plan, [], 8) is None
    assert eager_train_seconds(plan, [eager], 4) is None  # the plan has no tokens at that size
    # eager runs only: the default figures (no faster) decide, however long the run
    eager_only = compile_for_plan("auto", device_type="cpu", plan=plan, records=[eager], micro_batch=8)
    assert eager_only[0] is False and "no faster" in eager_only[1]
    # with the family's figures (break-even 60 s) the 100-second run is still short, 400 and 1000 s are not
    both = [eager, compiled]
    short = plan.__class__(**{**plan.__dict__, "steps": 100, "padded_tokens": {8: 100 * 500}})
    assert not compile_for_plan("auto", device_type="cpu", plan=short, records=both, micro_batch=8)[0]
    middle = plan.__class__(**{**plan.__dict__, "steps": 400, "padded_tokens": {8: 400 * 500}})
    assert compile_for_plan("auto", device_type="cpu", plan=middle, records=both, micro_batch=8)[0]
    assert compile_for_plan("auto", device_type="cpu", plan=plan, records=both, micro_batch=8)[0]


def test_a_run_is_estimated_from_the_runs_that_compiled_as_it_will():
    """A compiled step is faster and its first steps far slower: the two kinds never share a step model,
    in the child's live ETA nor in `mtld estimate`; a family with none of the kind yet uses what it has."""
    from mtld.train.eta import attempt_prior

    plan = runtime.PlanSummary(steps=1000, effective_batch=8, padded_tokens={m: 1000 * 500 for m in (2, 4, 8)},
                               evaluations=0, eval_tokens=0, saves=1)
    eager, compiled = record(1.0, 0.5), record(0.5, 30.5, compiled=True)
    assert runtime.same_kind([eager, compiled], compiled=True) == [compiled]
    assert runtime.same_kind([eager, compiled], compiled=False) == [eager]
    assert runtime.same_kind([eager], compiled=True) == [eager]
    history = [Figures(timing=timing(1.0, 0.5)), Figures(timing=timing(0.5, 30.5), compiled=True)]
    as_eager = attempt_prior(plan, micro_batch=8, history=history, compiled=False)
    as_compiled = attempt_prior(plan, micro_batch=8, history=history, compiled=True)
    assert as_eager["predicted_s"] == pytest.approx(attempt_prior(plan, micro_batch=8, history=history[:1])["predicted_s"])
    assert as_compiled["predicted_s"] == pytest.approx(attempt_prior(plan, micro_batch=8, history=history[1:])["predicted_s"])
    assert as_compiled["predicted_s"] < 0.6 * as_eager["predicted_s"]


def test_the_job_file_takes_auto_true_or_false_and_nothing_else(train_job):
    from mtld.config.jobspec import JobFileError, load_job

    job = train_job

    assert load_job(job("")).train.compile == "auto"
    assert load_job(job('compile = "auto"')).train.compile == "auto"
    assert load_job(job("compile = true")).train.compile is True
    assert load_job(job("compile = false")).train.compile is False
    for bad in ('"yes"', "1", '"true"'):
        with pytest.raises(JobFileError) as e:
            load_job(job(f"compile = {bad}"), shown_as="job.toml")
        assert str(e.value) == 'job.toml: train.compile - Input should be "auto", true or false'


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo
@pytest.mark.parametrize(("setting", "history", "compiles", "why"), [
    (True, [], True, "asked for"),
    (False, [Figures(timing=timing(60.0, 0.5))], False, "asked for"),
    ("auto", [], False, "no measured time yet"),
    ("auto", [Figures(timing=timing(6000.0, 0.5))], False, "no faster"),  # eager runs only: the default decides
    ("auto", [Figures(timing=timing(0.001, 0.0)), Figures(timing=timing(0.0005, 1.0), compiled=True)], False,
     "a short run"),
    ("auto", [Figures(timing=timing(6000.0, 0.5)), Figures(timing=timing(3000.0, 10.0), compiled=True)], True,
     "auto: ~51.2 min of training"),  # 256 tokens at 12 s each; the family's compiled run was 2x
])
def test_the_child_compiles_as_decided_and_says_so(jobs, read_events, monkeypatch, setting, history, compiles, why):
    """The whole attempt, with the encoder's compile recorded rather than done (a compiled step takes 10+ s)."""
    from mtld.runs.rundir import RunDir
    from mtld.train import model as model_module
    from mtld.train import run_attempt

    calls = []
    monkeypatch.setattr(model_module, "compile_encoder", lambda m: calls.append(m))
    spec = jobs.spec([jobs.task("classification", 16)], epochs=1, effective_batch_size=8, compile=setting)
    run_dir = jobs.run_dir(spec, micro_batch=8)
    rd = RunDir(run_dir)
    rd.write_launch(rd.read_launch().model_copy(update={"history": history}))
    assert run_attempt(run_dir) == 0
    assert len(calls) == (1 if compiles else 0)
    (started,) = read_events(run_dir, "run.started")
    assert started["compile"] is compiles and why in started["compile_reason"]
    assert rd.read_result().compiled is compiles  # the family's figures learn from it
    assert json.loads(rd.result_file.read_text()).get("compiled") is compiles


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo
def test_compile_encoder_compiles_in_place(jobs):
    import structlog
    import torch

    from mtld.train.guard import NoGuard
    from mtld.train.model import compile_encoder
    from mtld.train.setup import build
    from mtld.train.signals import StopFlag

    spec = jobs.spec([jobs.task("classification", 8)], compile=True)
    parts = build(spec, torch.device("cpu"), 2, stop=StopFlag(), guard=NoGuard(), log=structlog.get_logger())
    assert getattr(parts.model.encoder, "_compiled_call_impl", None) is None  # build leaves it to the attempt
    keys = parts.model.state_dict().keys()
    compile_encoder(parts.model)
    assert parts.model.encoder._compiled_call_impl is not None
    assert parts.model.state_dict().keys() == keys  # checkpoints and exports unchanged


def test_estimate_shows_the_decision_in_the_table_and_json():
    from mtld.cli.render import estimate_json, estimate_table

    plan = runtime.PlanSummary(steps=10, effective_batch=8, padded_tokens={2: 900, 4: 1000, 8: 1100},
                               evaluations=1, eval_tokens=10, saves=2)
    rows = runtime.predict(plan, [], chosen=8)
    decided = compile_for_plan("auto", device_type="cpu", plan=plan, records=[], micro_batch=8)
    assert estimate_table(plan, rows, decided).splitlines()[-1] == (
        "torch.compile: no (auto: no measured time yet for this family at this size)")
    assert estimate_json(plan, rows, decided)["compile"] == {
        "compile": False, "reason": "auto: no measured time yet for this family at this size"}
