"""Recorded nights, replayed through the real daemon tick, policy, probes, sampler and guard (tests/scenario.py).

The traces are in tests/traces/ (made by tests/traces/make_traces.py; a trace
recorded on a Mac with `mtld doctor --record-trace` has the same format).
Defaults throughout: dwell 5 s, quiet 30 s, resume after 60 s of calm, hold
after 3 pressure interrupts in an hour; the job needs the given seconds of
work at micro-batch 8 and starts there.
"""

from __future__ import annotations

import pytest

from mtld.memory import ReplayProbe, read_trace
from mtld.memory.levels import Level
from mtld.config.settings import MemorySettings
from tests.scenario import TRACES, GiB, MemorystatusLevelFits, play


def test_false_warn_mps_training_with_the_kernel_normal_and_available_at_4_to_8_percent(tmp_path):
    rows = read_trace(TRACES / "mps_false_warn.jsonl")
    assert all(0.04 <= r.available_share <= 0.08 and r.kernel_level == 1 for r in rows)
    played = play("mps_false_warn", tmp_path, work_s=600)
    assert played.path == [8]  # no scale-down: psutil's share is data, the kernel said normal
    assert (played.interrupts, played.restarts, played.state) == (0, 0, "succeeded")
    [decided] = played.events["policy.decided"]
    assert decided["pressure"] == "normal" and decided["micro_batch"] == 8


def test_flapping_warn_halves_once(tmp_path):
    played = play("mps_flapping_warn", tmp_path, work_s=500)  # warn/normal every second, t = 60-359
    assert played.path == [8, 4]
    assert (played.interrupts, played.restarts, played.state) == (0, 0, "succeeded")


def test_sustained_warn_halves_once_per_dwell_and_quiet_down_to_2(tmp_path):
    played = play("mps_sustained_warn", tmp_path, work_s=400)  # warn t = 60-359: halves at 65 and 100
    assert played.path == [8, 4, 2]
    assert played.runs == [(8, 2, "succeeded")]
    assert (played.interrupts, played.restarts, played.state) == (0, 0, "succeeded")


def test_a_3_second_critical_spike_changes_nothing(tmp_path):
    played = play("mps_critical_spike", tmp_path, work_s=450)  # the spike at t = 300, mid-run
    assert played.path == [8]
    assert (played.interrupts, played.restarts, played.state) == (0, 0, "succeeded")


def test_sustained_critical_for_30_minutes_interrupts_three_times_then_holds(tmp_path):
    played = play("mps_sustained_critical", tmp_path, work_s=600)
    # critical from t = 120: interrupt at 125; the 20 s dips do not restart it, the 90 s ones do after 60 s of
    # calm, one size down each time; the third interrupt (at 2) holds the job for good
    assert played.path == [8, 4, 2]
    assert played.runs == [(8, 8, "interrupted"), (4, 4, "interrupted"), (2, 2, "interrupted")]
    assert (played.interrupts, played.restarts, played.state) == (3, 2, "queued")
    assert played.hold == "memory pressure: 3 interrupts in 10 min — `mtld retry 1` to release"
    [held] = played.events["job.held"]
    assert held["hold"] == played.hold
    deferred = {e["reason"] for e in played.events["run.deferred"]}
    assert deferred == {"memory_critical", "memory_settling"}
    reasons = [e["reason"] for e in played.events["policy.decided"]]
    assert "interrupted by memory pressure at 8: one size down" in reasons[1]
    assert "interrupted by memory pressure at 4: one size down" in reasons[2]
    assert played.done < 1.0  # held, not finished: the trace's last 13 minutes are calm and it still waits


def test_a_slow_leak_over_the_budget_halves_down_to_2_and_finishes(tmp_path):
    # the footprint grows 5 → 13 GiB over 15 min and crosses the budget (80 % of 12 GiB) at about t = 520
    played = play("mps_slow_leak", tmp_path, work_s=900)
    assert played.path == [8, 4, 2]
    assert (played.interrupts, played.restarts, played.state) == (0, 0, "succeeded")


def test_linux_psi_rising_halves_then_interrupts_then_resumes_at_2(tmp_path):
    # PSI some ≥ 10 from t = 160 → halves at 165 and 200; full ≥ 5 from t = 470 → interrupt at 475; PSI decays
    # after 600, normal from about 622, and the run resumes a minute later, at 2 (nothing is smaller)
    played = play("linux_psi_rising", tmp_path, work_s=600, device="cpu", budget=20 * GiB)
    assert played.path == [8, 4, 2, 2]
    assert played.runs == [(8, 2, "interrupted"), (2, 2, "succeeded")]
    assert (played.interrupts, played.restarts, played.state) == (1, 1, "succeeded")


EARLIER_NIGHTS = [(4, int(3.7 * GiB)), (8, int(5.6 * GiB))]  # the family ran clean at 4, then at 8


def test_fits_counts_free_speculative_and_inactive_pages_not_the_other_apps_active_ones(tmp_path):
    """A 16 GiB Mac with apps left open (mps_apps_open: 65 % by kern.memorystatus_level, 4.1 GiB free +
    speculative + inactive): the rule before issue 22 starts at 8, whose last run peaked at 5.6 GiB; the
    new one steps down to 4 (3.7 GiB), which fits."""
    rows = read_trace(TRACES / "mps_apps_open.jsonl")
    assert all(r.kernel_level == 1 and r.memorystatus_level == 65 for r in rows)  # the kernel sees no pressure
    vm = rows[0].vm
    fits_now = (vm.free_count + vm.inactive_count) * vm.page_size  # free_count includes the speculative pages
    assert 4 * GiB < fits_now < int(5.6 * GiB) < 16 * GiB * 65 // 100

    before = play(rows, tmp_path / "before", work_s=300, earlier=EARLIER_NIGHTS, fits_rule=MemorystatusLevelFits)
    [decided] = before.events["policy.decided"]
    assert decided["micro_batch"] == 8 and "available" not in decided["reason"]  # 5.6 GiB < 10.4 GiB: admitted
    assert before.path == [8] and before.state == "succeeded"

    now = play(rows, tmp_path / "now", work_s=300, earlier=EARLIER_NIGHTS)
    [decided] = now.events["policy.decided"]
    assert decided["micro_batch"] == 4
    assert decided["reason"].endswith(f"8 peaked at {int(5.6 * GiB):,} bytes > {fits_now:,} available: 4")
    assert now.path == [4] and now.runs == [(4, 4, "succeeded")] and now.events["run.deferred"] == []


def test_fits_defers_a_larger_model_that_the_old_rule_would_have_started_at_8(tmp_path):
    """A BERT-large family (peaks 6.2, 7.0 and 8.5 GiB at 2, 4 and 8) on the same Mac: 8.5 GiB is under the
    10.4 GiB kern.memorystatus_level offers, so the old rule started it at 8; the new one waits."""
    rows = read_trace(TRACES / "mps_apps_open.jsonl")
    large = [(2, int(6.2 * GiB)), (4, int(7.0 * GiB)), (8, int(8.5 * GiB))]

    before = play(rows, tmp_path / "before", work_s=300, earlier=large, fits_rule=MemorystatusLevelFits)
    assert [d["micro_batch"] for d in before.events["policy.decided"]] == [8] and before.path == [8]

    now = play(rows, tmp_path / "now", work_s=300, earlier=large)
    assert now.path == [] and now.runs == [] and now.state == "queued" and now.events["policy.decided"] == []
    [deferred] = now.events["run.deferred"]  # logged once, when the reason first appears
    assert deferred["reason"] == "does_not_fit"
    assert deferred["message"].startswith(f"micro-batch 2 peaked at {int(6.2 * GiB):,} bytes; only ")


@pytest.mark.parametrize(("trace", "t", "level", "source"), [
    ("mps_false_warn", 10, Level.NORMAL, "darwin"),
    ("mps_flapping_warn", 60, Level.WARN, "darwin"),
    ("mps_sustained_critical", 130, Level.CRITICAL, "darwin"),
    ("linux_psi_rising", 300, Level.WARN, "linux"),
    ("linux_psi_rising", 550, Level.CRITICAL, "linux"),
    ("linux_psi_rising", 1400, Level.NORMAL, "linux"),
])
def test_the_replay_probe_decides_each_row_with_the_real_probe(trace, t, level, source):
    probe = ReplayProbe(TRACES / f"{trace}.jsonl", MemorySettings(), clock=lambda: t + 0.5, start=0.0)
    reading = probe.read()
    assert (reading.level, reading.source, reading.detail["trace_t"]) == (level, "replay", float(t))
    assert probe.row().platform == source


def test_the_old_rule_would_have_warned_on_the_false_warn_trace():
    """What made the old guard misfire is still in the reading, as data: the available share's own verdict."""
    rows = read_trace(TRACES / "mps_false_warn.jsonl")
    t = {"now": 0.0}
    probe = ReplayProbe(rows, MemorySettings(), clock=lambda: t["now"], start=0.0)
    verdicts = set()
    for second in range(len(rows)):
        t["now"] = float(second)
        reading = probe.read()
        assert reading.level is Level.NORMAL
        verdicts.add(reading.detail["available_level"])
    assert verdicts == {"warn", "critical"}  # 4-8 %: under the 10 % warn and, at times, the 5 % critical share
