"""`mtld doctor --selftest`: the report's schema, the machinery, and the Linux and everywhere checks
for real on this machine (the macOS and CUDA checks: tests/test_selftest_fakes.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from mtld.doctor.selftest import Context, Failed, Skipped, Spec, linux, run_selftest
from mtld.doctor.selftest.base import run_check
from mtld.doctor.selftest.report import SCHEMA_FILE, Report, schema_text
from mtld.doctor.selftest.show import table
from mtld.testing import RecordingRunner
from tests.conftest import REPO, child_env, run_cli


def validate(value, schema, root=None, where="$"):
    """The parts of JSON Schema that docs/selftest-schema.json uses: $ref, type, enum, properties,
    required, additionalProperties, items, anyOf."""
    root = root or schema
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return validate(value, option, root, where)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: matches none of {errors}")
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
             "boolean": bool, "null": type(None)}
    if "type" in schema:
        assert isinstance(value, kinds[schema["type"]]), f"{where}: {value!r} is not {schema['type']}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: {key} missing"
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                validate(item, properties[key], root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{where}: unexpected {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(item, schema["additionalProperties"], root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], root, f"{where}[{i}]")


def test_the_documented_schema_is_the_models():
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "docs/selftest-schema.json is stale: python -m mtld.doctor.selftest.report > docs/selftest-schema.json")


def test_a_check_passes_fails_or_skips_and_never_raises(tmp_path):
    ctx = Context(home=tmp_path)

    def broken(ctx):
        raise ZeroDivisionError("division by zero")

    def skipped(ctx):
        raise Skipped("macOS only")

    def failed(ctx):
        raise Failed("differs by 1e-3", {"diff": 1e-3})

    results = [run_check(Spec(name, "everywhere", "it matters", fn), ctx) for name, fn in
               [("a", lambda ctx: {"x_s": 1.5}), ("b", skipped), ("c", failed), ("d", broken)]]
    assert [(c.status, c.why, c.figures) for c in results] == [
        ("pass", None, {"x_s": 1.5}), ("skipped", "macOS only", {}), ("fail", "differs by 1e-3", {"diff": 1e-3}),
        ("fail", "ZeroDivisionError: division by zero", {})]


def test_the_report_counts_and_the_table_says_what_a_failure_means(tmp_path):
    specs = [Spec("x.ok", "everywhere", "never shown", lambda ctx: {"n": 1}),
             Spec("x.bad", "linux", "the machine may sleep mid-run.", lambda ctx: (_ for _ in ()).throw(Failed("no")))]
    report = run_selftest(quick=True, out_dir=tmp_path, checks=specs)
    assert report.counts == {"pass": 1, "fail": 1, "skipped": 0} and not report.ok
    assert report.platform["sys_platform"] == sys.platform and report.versions["torch"]
    validate(report.model_dump(mode="json"), json.loads(SCHEMA_FILE.read_text()))
    from rich.console import Console

    console = Console(record=True, width=200)
    table(console, report, "r.json")
    text = console.export_text()
    assert "x.bad" in text and "FAIL" in text and "the machine may sleep mid-run." in text
    assert "1 passed, 1 failed, 0 skipped" in text and "r.json" in text


def test_quick_without_selftest_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "mtld", "doctor", "--quick"], env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == "--quick and --out go with --selftest\n"


def test_user_bus_offline_and_inhibit_without_logind_are_skips_that_say_why(tmp_path):
    runner = RecordingRunner().on("systemctl", returncode=1, stdout="offline\n")
    runner.on("systemd-inhibit", returncode=1, stderr="Failed to connect to bus: No such file or directory\n")
    ctx = Context(home=tmp_path, runner=runner, platform="linux")
    bus = run_check(linux.CHECKS[3], ctx)
    assert bus.status == "skipped" and "offline" in bus.why and "enable-linger" in bus.why
    runner = RecordingRunner().on("systemctl", stdout="running\n")
    assert run_check(linux.CHECKS[3], Context(home=tmp_path, runner=runner, platform="linux")).status == "pass"
    mac = run_check(linux.CHECKS[0], Context(home=tmp_path, platform="darwin"))
    assert (mac.status, mac.why) == ("skipped", "Linux only")


def test_psi_missing_is_a_failure_that_names_the_kernel_option(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 500 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")
    ctx = Context(home=tmp_path, platform="linux", shared={"root": tmp_path})
    check = run_check(linux.CHECKS[0], ctx)
    assert check.status == "fail" and "CONFIG_PSI" in check.why


def test_the_report_goes_to_the_state_folder_or_to_out_never_here_and_its_path_is_printed(tmp_path, monkeypatch):
    """A self-test run from a project checkout left mtld-selftest-*.json in it. One quick fake check, through
    the real command: it writes a trace beside the report, as the macOS pressure trace does."""
    home, here = tmp_path / "home", tmp_path / "checkout"
    here.mkdir()
    monkeypatch.chdir(here)
    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTLD_HOME", str(home))

    def traced(ctx: Context) -> dict:
        trace = ctx.out_dir / "mtld-trace-test.jsonl"
        trace.write_text("{}\n")
        ctx.files["trace"] = str(trace)
        return {"n": 1}

    monkeypatch.setattr("mtld.doctor.selftest.ALL_CHECKS", [Spec("x.traced", "everywhere", "nothing", traced)])
    code, stdout, stderr = run_cli("doctor", "--selftest", "--quick", "--json")
    report = Report.model_validate_json(stdout)
    assert code == 0 and [c.name for c in report.checks] == ["x.traced"]
    [written] = (home / "selftest").glob("mtld-selftest-*.json")
    assert Report.model_validate_json(written.read_text()) == report
    assert stderr.splitlines()[-1] == f"mtld doctor: the report is {written}"
    assert report.files == {"trace": str(home / "selftest" / "mtld-trace-test.jsonl")}
    assert stat.S_IMODE(written.stat().st_mode) == 0o600  # user-only, like the rest of the state
    assert stat.S_IMODE((home / "selftest").stat().st_mode) == 0o700
    assert list(here.iterdir()) == []

    chosen = tmp_path / "attach" / "report.json"
    code, stdout, stderr = run_cli("doctor", "--selftest", "--quick", "--json", "--out", str(chosen))
    assert code == 0 and json.loads(chosen.read_text()) == json.loads(stdout)
    assert stderr.splitlines()[-1] == f"mtld doctor: the report is {chosen}"
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o600 and (tmp_path / "attach" / "mtld-trace-test.jsonl").exists()
    assert list(here.iterdir()) == [] and list((home / "selftest").glob("mtld-selftest-*.json")) == [written]

    code, stdout, _ = run_cli("doctor", "--selftest", "--quick", "--out", "here.json")  # relative: to the current folder
    assert code == 0 and stdout.splitlines()[-1].endswith(f"; the report is {here / 'here.json'}")
    assert Report.model_validate_json((here / "here.json").read_text()).counts == {"pass": 1, "fail": 0, "skipped": 0}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux checks, for real")
def test_quick_selftest_passes_here_and_its_json_validates(tmp_path):
    out = tmp_path / "report.json"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mtld", "doctor", "--selftest", "--quick", "--json", "--out", str(out)],
                          cwd=tmp_path, env=child_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    wall_s = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(done.stdout)
    validate(data, json.loads(SCHEMA_FILE.read_text()))
    report = Report.model_validate(data)
    assert json.loads(out.read_text()) == data  # the file and stdout are the same report
    by_name = {c.name: c for c in report.checks}
    for check in report.checks:
        if check.group in ("everywhere", "linux"):
            assert check.status in ("pass", "skipped"), (check.name, check.why)
        if check.status == "skipped":
            assert check.why, check.name
        assert check.meaning
    assert by_name["train.micro_batch_independence"].status == "pass"
    assert by_name["train.sigterm_resume"].status == "pass"
    assert by_name["linux.psi"].status == "pass"
    assert {c.status for c in report.checks if c.group == "macos"} <= {"skipped"}
    sizes = by_name["train.micro_batch_independence"].figures
    assert all(sizes[f"b{b}"]["step_s"] > 0 for b in (2, 4, 8))
    assert by_name["train.sigterm_resume"].figures["max_abs_diff_vs_uninterrupted"] <= 1e-6
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # nothing else left here
    print(f"quick self-test: {wall_s:.1f} s wall, report {report.seconds} s")


def test_queued_jobs_paths_are_what_install_warns_about_and_what_the_agent_must_read(tmp_path):
    from types import SimpleNamespace

    from mtld.cli.service import _queued_paths
    from mtld.config.jobspec import spec_from_dict, spec_to_json
    from mtld.cli.selftest import user_folders
    from mtld.config.settings import Settings
    from mtld.store import Store

    settings = Settings.model_construct(home=tmp_path / "state")
    docs = tmp_path / "Documents/corpus"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    spec = spec_from_dict({"name": "j", "model": str(tmp_path / "model"), "tasks": [
        {"name": "t", "type": "classification", "train": str(docs / "train.jsonl"), "eval": str(docs / "eval.jsonl")}]},
        base_dir=tmp_path, shown_as="j.toml", check_data=False)
    with Store(settings.db_path) as store:
        job = store.submit(name="j", spec_json=spec_to_json(spec), job_file="j.toml", run_root=tmp_path / "runs", now=1.0)
        paths = [(f"job {job.id} model", tmp_path / "model"), (f"job {job.id} data", docs / "train.jsonl"),
                 (f"job {job.id} data", docs / "eval.jsonl")]
        assert _queued_paths(SimpleNamespace(store=store)) == paths
    hf = {"HF_HOME": str(tmp_path / "Documents/hf"), "HTTPS_PROXY": "http://proxy:3128"}  # the agent's environment
    assert user_folders(settings, hf) == [("MTLD_HOME", tmp_path / "state"), ("HF_HOME", tmp_path / "Documents/hf"),
                                          *paths]
