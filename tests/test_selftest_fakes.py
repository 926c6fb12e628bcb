"""The macOS and CUDA self-test checks on any machine: recorded command outputs (RecordingRunner),
fake clocks and fakes of torch.mps / torch.cuda at the edge."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mtld.doctor.selftest import Context, cuda, macos, macos_agent
from mtld.doctor.selftest.base import run_check
from mtld.testing import RecordingRunner

MIB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)


def mac(tmp_path: Path, runner=None, **shared) -> Context:
    clock = FakeClock()
    return Context(home=tmp_path, platform="darwin", runner=runner or RecordingRunner(), out_dir=tmp_path,
                   clock=clock, sleep=clock.sleep, label_suffix="77", shared=shared)


def by_name(module, name):
    return next(spec for spec in module.CHECKS if spec.name == name)


# ---------------------------------------------------------------- memory (fake torch.mps)


class Block:
    def __init__(self, owner: "FakeMps", size: int):
        self.owner, self.size = owner, size

    def __del__(self):  # freed tensors go back to the caching allocator, not to the driver
        self.owner.allocated -= self.size
        self.owner.cached += self.size


class FakeMps:
    """torch.mps as the checks use it: a caching allocator with a per-process fraction."""

    def __init__(self, recommended: int = 4096 * MIB, oom_error: Exception | None = None):
        self.recommended, self.allocated, self.cached, self.fraction = recommended, 0, 0, 0.0
        self.oom_error = oom_error
        self.steps = 0

    def available(self):
        return True

    def recommended_max(self):
        return self.recommended

    def driver_allocated(self):
        return self.allocated + self.cached + 8 * MIB

    def allocate(self, size):
        cap = self.fraction * self.recommended if self.fraction else float("inf")
        if self.allocated + self.cached + size > cap:
            # the message of PyTorch's MPSAllocator (aten/src/ATen/mps/MPSAllocator.mm)
            raise self.oom_error or RuntimeError(
                f"MPS backend out of memory (MPS allocated: {self.allocated / MIB:.2f} MiB, other allocations: "
                f"8.00 MiB, max allowed: {cap / MIB:.2f} MiB). Tried to allocate 256.00 MiB on private pool. Use "
                "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations (may cause "
                "system failure).")
        self.allocated += size
        return Block(self, size)

    def set_fraction(self, fraction):
        self.fraction = fraction

    def empty_cache(self):
        self.cached = 0

    def step(self, batch=8):
        self.steps += 1
        return 0.69


def sysctl(values: dict[str, int]):
    return lambda name: values[name]


def test_pressure_level_read_two_ways_agrees(tmp_path):
    runner = RecordingRunner().on("sysctl", "-n", "kern.memorystatus_vm_pressure_level", stdout="1\n")
    runner.on("sysctl", "-n", "kern.memorystatus_level", stdout="61\n")
    ctx = mac(tmp_path, runner, sysctl=sysctl({macos.PRESSURE: 1, macos.FREE_LEVEL: 62}))
    check = run_check(by_name(macos, "macos.pressure_level"), ctx)
    assert check.status == "pass", check.why
    assert check.figures[macos.PRESSURE] == {"ctypes": 1, "sysctl": 1}

    runner = RecordingRunner().on("sysctl", stdout="2\n")  # the command says warn three times, ctypes normal
    check = run_check(by_name(macos, "macos.pressure_level"), mac(tmp_path, runner, sysctl=sysctl({macos.PRESSURE: 1})))
    assert check.status == "fail" and "ctypes reads 1, `sysctl -n` 2" in check.why
    assert [c[2] for c in runner.calls] == [macos.PRESSURE] * 3


def test_pressure_trace_writes_the_replay_format_and_flags_what_only_available_share_shows(tmp_path):
    mps = FakeMps()
    shares = iter([0.5] * 6 + [0.08] * 20)  # psutil's share drops below warn while the kernel stays normal
    ctx = mac(tmp_path, mps=mps, sysctl=sysctl({macos.PRESSURE: 1, macos.FREE_LEVEL: 40}),
              available_share=lambda: next(shares), footprint=lambda: 300 * MIB)
    check = run_check(by_name(macos, "macos.pressure_trace"), ctx)
    assert check.status == "pass", check.why
    path = Path(check.figures["trace"])
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(samples) == 16 and ctx.files["pressure_trace"] == str(path)  # --quick: 15 s at 1 Hz
    assert [s["t"] for s in samples[:3]] == [0.0, 1.0, 2.0]
    assert samples[0]["kernel_level"] == 1 and samples[0]["footprint_bytes"] == 300 * MIB
    from mtld.memory import make_probe
    from mtld.config.settings import MemorySettings

    replayed = make_probe(MemorySettings(probe="replay", replay_file=path))  # what a replay reads back
    assert replayed.read().level.value == "normal"
    target = int(0.6 * mps.recommended)
    assert check.figures["allocated_bytes"] == target and samples[-1]["device_bytes"] >= target
    assert check.figures["available_only_alarms"] == 10 and check.figures["first_available_only_alarm"][0] == 6.0
    assert mps.allocated == 0 and mps.cached == 0  # all given back


def test_an_mps_oom_is_recognised_and_survived(tmp_path):
    mps = FakeMps()
    check = run_check(by_name(macos, "macos.mps_oom"), mac(tmp_path, mps=mps))
    assert check.status == "pass", check.why
    assert check.figures["error"].startswith("MPS backend out of memory")
    assert check.figures["driver_bytes_after_empty_cache"] < check.figures["driver_bytes_at_oom"]
    assert mps.fraction == 0.0 and mps.steps == 1  # the cap is lifted, and a step ran afterwards

    check = run_check(by_name(macos, "macos.mps_oom"), mac(tmp_path, mps=FakeMps(oom_error=ValueError("odd"))))
    assert check.status == "fail" and "does not recognise" in check.why


def test_driver_memory_is_read_from_a_second_thread(tmp_path):
    check = run_check(by_name(macos, "macos.driver_memory_thread"), mac(tmp_path, mps=FakeMps()))
    assert check.status == "pass" and check.figures["reads"] > 0 and check.figures["steps"] == 50


def test_mac_checks_skip_elsewhere_and_without_mps(tmp_path):
    check = run_check(by_name(macos, "macos.mps_oom"), Context(home=tmp_path, platform="linux"))
    assert (check.status, check.why) == ("skipped", "macOS only")
    no_mps = FakeMps()
    no_mps.available = lambda: False
    check = run_check(by_name(macos, "macos.mps_oom"), mac(tmp_path, mps=no_mps))
    assert check.status == "skipped" and "MPS is not available" in check.why


# ---------------------------------------------------------------- the throwaway agent (recorded launchctl)

PRINT_RUNNING = """\
gui/501/io.mtld.selftest.77 = {
\tactive count = 1
\tpath = {plist}
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/ann/venv/bin/python
\tdomain = gui/501 [100003]
\tminimum runtime = 10
\texit timeout = {timeout}
\tumask = 77
\truns = 1
\tpid = 5150
\tspawn type = interactive (4)
\tlast exit code = (never exited)
}
"""
NOT_FOUND = dict(returncode=113, stderr='Could not find service "io.mtld.selftest.77" in domain for port')


class AgentRunner(RecordingRunner):
    """Recorded launchctl answers, and the agent's own doing: at bootstrap it writes what it could
    read, at bootout it notes SIGTERM."""

    def __init__(self, out: Path, reads: list[str]):
        super().__init__()
        self.out, self.reads = out, reads

    def run(self, argv):
        if argv[:2] == ["launchctl", "bootstrap"] and not self.out.exists():
            self.out.write_text("".join(line + "\n" for line in self.reads))
        if argv[:2] == ["launchctl", "bootout"] and self.out.exists():
            self.out.write_text(self.out.read_text() + "SIGTERM\n")
        return super().run(argv)


def agent_runner(tmp_path, reads, timeout=30):
    runner = AgentRunner(tmp_path / "agent.out", reads)
    running = PRINT_RUNNING.replace("{plist}", str(tmp_path / "io.mtld.selftest.77.plist")).replace(
        "{timeout}", str(timeout))
    runner.on("launchctl", "print", stdout=running)  # polled until running
    runner.on("launchctl", "print", stdout=running)  # read by the parser
    runner.on("launchctl", "print", stdout=running.replace("state = running", "state = SIGTERMed"))
    runner.on("launchctl", "print", **NOT_FOUND)
    runner.on("launchctl", "bootstrap", returncode=0)
    runner.on("launchctl", "bootstrap", returncode=5, stderr="Bootstrap failed: 5: Input/output error")
    runner.on("launchctl", "bootstrap", returncode=0)
    return runner


AGENT_PYTHON = "/Users/ann/venv/bin/python"  # the installed agent's, as the CLI passes it (agent_python)
READS = ["python\t/Users/ann/venv/bin/python\t/Users/ann/venv", "import\tok",
         "ok\t/Users/ann/Library/Application Support/mtld", "denied\t/Users/ann/Documents/data",
         "missing\t/Users/ann/new"]


def test_throwaway_agent_enable_bootstrap_print_bootout_and_bootstrap_again(tmp_path):
    runner = agent_runner(tmp_path, READS)
    ctx = mac(tmp_path, runner, exit_timeout_s=30, user_folders=[("MTLD_HOME", Path("/Users/ann/x"))],
              agent_python=AGENT_PYTHON)

    check = run_check(by_name(macos_agent, "macos.launchd_agent"), ctx)

    assert check.status == "pass", check.why
    target = f"gui/{__import__('os').getuid()}/io.mtld.selftest.77"
    plist = tmp_path / "io.mtld.selftest.77.plist"
    verbs = [c[1] if c[0] == "launchctl" else c[0] for c in runner.calls]
    assert verbs == ["plutil", "enable", "bootstrap", "print", "print", "bootout", "print", "print", "bootstrap",
                     "bootstrap", "bootout", "print"]
    assert runner.calls[1] == ["launchctl", "enable", target]
    assert runner.calls[2] == ["launchctl", "bootstrap", target.rsplit("/", 1)[0], str(plist)]
    # The agent is run by mtld's own Python (privacy protection judges that binary), from a 0600 plist.
    keys = __import__("plistlib").loads(plist.read_bytes())
    assert keys["ProgramArguments"] == [AGENT_PYTHON, str(tmp_path / "agent.py"), "/Users/ann/x"]
    assert plist.stat().st_mode & 0o777 == 0o600
    f = check.figures
    assert (f["state"], f["pid"], f["exit_timeout_s"], f["umask"], f["process_type"], f["python"]) == (
        "running", 5150, 30, 0o077, "interactive", AGENT_PYTHON)
    assert f["bootout_to_gone_s"] == 0.25 and f["bootout_to_bootstrap_again_s"] == 0.25 and f["sigterm_trapped"]
    assert "MTLD_HOME" not in f  # the user's state is only read, by the agent

    folders = run_check(by_name(macos_agent, "macos.agent_folders"), ctx)
    assert folders.status == "fail" and "/Users/ann/Documents/data" in folders.why and "Full Disk Access" in folders.why
    assert folders.figures == {"python": AGENT_PYTHON, "prefix": "/Users/ann/venv", "import_mtld": "ok", "readable": 1,
                               "denied": ["/Users/ann/Documents/data"], "missing": ["/Users/ann/new"]}
    ctx.shared["agent_reads"] = ["import\tok", "ok\t/a b", "missing\t/b"]  # paths may hold spaces
    assert run_check(by_name(macos_agent, "macos.agent_folders"), ctx).status == "pass"
    ctx.shared["agent_reads"] = ["import\tModuleNotFoundError: No module named 'mtld'", "ok\t/a"]
    failed = run_check(by_name(macos_agent, "macos.agent_folders"), ctx)
    assert failed.status == "fail" and "cannot import mtld (ModuleNotFoundError" in failed.why


def test_an_agent_whose_python_cannot_start_names_the_binary_to_grant(tmp_path):
    """A venv in ~/Documents: launchd starts the python, which cannot read pyvenv.cfg and exits at once."""
    runner = RecordingRunner()
    crashed = PRINT_RUNNING.replace("state = running", "state = spawn scheduled").replace(
        "(never exited)", "78: EX_CONFIG")
    runner.on("launchctl", "print", stdout=crashed)
    (tmp_path / "daemon.stderr.log").write_text("Fatal Python error: ...\nPermissionError: [Errno 1] Operation not "
                                                "permitted: '/Users/ann/Documents/p/.venv/pyvenv.cfg'\n")
    ctx = mac(tmp_path, runner, exit_timeout_s=30, agent_python="/Users/ann/Documents/p/.venv/bin/python")

    check = run_check(by_name(macos_agent, "macos.launchd_agent"), ctx)

    assert check.status == "fail"
    assert "did not start under launchd" in check.why and "last exit code 78: EX_CONFIG" in check.why
    assert "Operation not permitted: '/Users/ann/Documents/p/.venv/pyvenv.cfg'" in check.why
    assert "Full Disk Access" in check.why
    verbs = [c[1] for c in runner.calls if c[0] == "launchctl"]
    assert verbs.index("bootout") > verbs.index("bootstrap")  # not left loaded, restarting all night
    folders = run_check(by_name(macos_agent, "macos.agent_folders"), ctx)
    assert folders.status == "fail" and folders.why == check.why  # not "skipped": the agent itself is the finding


def test_bootstrap_from_ssh_is_one_clear_line(tmp_path):
    runner = RecordingRunner().on("launchctl", "bootstrap", returncode=125,
                                  stderr="Bootstrap failed: 125: Domain does not support specified action\n")
    check = run_check(by_name(macos_agent, "macos.launchd_agent"), mac(tmp_path, runner, exit_timeout_s=30))
    assert check.status == "fail" and "no GUI login session" in check.why and "Screen Sharing" in check.why


def test_an_exit_timeout_launchd_clamped_is_a_failure_and_the_agent_is_still_removed(tmp_path):
    runner = agent_runner(tmp_path, [], timeout=20)
    check = run_check(by_name(macos_agent, "macos.launchd_agent"), mac(tmp_path, runner, exit_timeout_s=30))
    assert check.status == "fail" and "exit timeout of 20 s, not the plist's 30 s" in check.why
    assert [c[1] for c in runner.calls[-3:]] == ["bootout", "print", "print"]  # nothing left loaded


# ---------------------------------------------------------------- caffeinate, battery, notification

ASSERTIONS = """\
Assertion status system-wide:
   PreventUserIdleDisplaySleep    0
   PreventUserIdleSystemSleep     {n}
Listed by owning process:
   pid 35(powerd): [0x0000000000000000] 00:00:00 PreventUserIdleSystemSleep named: "Powerd - Prevent sleep while display is on"
{line}"""
CAFFEINATE = ('   pid 4243(caffeinate): [0x0000d4d200018b3a] 00:00:01 PreventUserIdleSystemSleep named: '
              '"caffeinate command-line tool"\n\tDetails: caffeinate asserting on behalf of \'/bin/sleep\' (pid 4242)\n')


class FakeProcess:
    def __init__(self, pid, ends_with=None):
        self.pid, self.returncode, self.ends_with = pid, None, ends_with

    def send_signal(self, signum):
        self.returncode = -signum
        if self.ends_with:
            self.ends_with.returncode = 0

    def wait(self, timeout=None):
        if self.returncode is None:
            raise subprocess.TimeoutExpired("caffeinate", timeout)
        return self.returncode

    def kill(self):
        self.returncode = -9


def test_caffeinate_shows_in_pmset_and_goes_with_its_pid(tmp_path):
    caffeinate = FakeProcess(4243)
    waiter = FakeProcess(4242, ends_with=caffeinate)
    spawned = []

    def spawn(argv):
        spawned.append(argv)
        return waiter if argv[0] == "sleep" else caffeinate

    runner = RecordingRunner()
    runner.on("pmset", "-g", "assertions", stdout=ASSERTIONS.format(n=1, line=""))
    runner.on("pmset", "-g", "assertions", stdout=ASSERTIONS.format(n=2, line=CAFFEINATE))
    runner.on("pmset", "-g", "assertions", stdout=ASSERTIONS.format(n=1, line=""))
    check = run_check(by_name(macos_agent, "macos.caffeinate"), mac(tmp_path, runner, spawn=spawn))
    assert check.status == "pass", check.why
    assert spawned[1] == ["caffeinate", "-i", "-w", "4242"]
    assert check.figures == {"appeared_s": 0.25, "caffeinate_exit": 0, "gone_s": 0.0}
    assert macos_agent.caffeinate_asserting(ASSERTIONS.format(n=2, line=CAFFEINATE), 4243)
    assert not macos_agent.caffeinate_asserting(ASSERTIONS.format(n=2, line=CAFFEINATE), 4242)


@pytest.mark.parametrize(("pmset", "psutil_says", "status"), [
    ("Now drawing from 'Battery Power'\n -InternalBattery-0 (id=4653155)\t80%; discharging; 5:01 remaining present: true\n",
     True, "pass"),
    ("Now drawing from 'AC Power'\n -InternalBattery-0 (id=4653155)\t100%; charged; 0:00 remaining present: true\n",
     False, "pass"),
    ("Now drawing from 'AC Power'\n", None, "pass"),  # a Mac mini: no battery
    ("Now drawing from 'Battery Power'\n", False, "fail"),
])  # fmt: skip
def test_on_battery_agrees_with_pmset(tmp_path, pmset, psutil_says, status):
    runner = RecordingRunner().on("pmset", "-g", "batt", stdout=pmset)
    check = run_check(by_name(macos_agent, "macos.battery"), mac(tmp_path, runner, on_battery=lambda: psutil_says))
    assert check.status == status, check.why


def test_a_notification_is_reported_sent_never_delivered(tmp_path, monkeypatch):
    monkeypatch.setattr("mtld.platform.power.shutil.which", lambda name: f"/usr/bin/{name}", raising=False)
    runner = RecordingRunner()
    check = run_check(by_name(macos_agent, "macos.notification"), mac(tmp_path, runner))
    assert check.status == "pass" and runner.calls[0][:2] == ["osascript", "-e"]
    assert check.figures["sent"] is True and check.figures["delivered"].startswith("unknown")
    assert "not that it was shown" in check.meaning
    runner = RecordingRunner().on("osascript", returncode=1, stderr="execution error: Not authorized (-1743)")
    check = run_check(by_name(macos_agent, "macos.notification"), mac(tmp_path, runner))
    assert check.status == "fail" and check.why.startswith("the notification was not sent") and "Not authorized" in check.why
    assert check.figures["sent"] is False


# ---------------------------------------------------------------- CUDA (fake torch.cuda)


class FakeCuda:
    """torch.cuda as the checks use it: activations of 100 MiB per sample, a capped allocator."""

    def __init__(self, total=80 << 30, free=None, error=None):
        self.total_bytes, self.free_bytes, self.cap, self.held = total, free, None, 2 << 30
        self.error = error

    def available(self):
        return True

    def total(self):
        return self.total_bytes

    def mem_get_info(self):
        return (self.free_bytes if self.free_bytes is not None else self.total_bytes - self.held), self.total_bytes

    def set_fraction(self, fraction):
        self.cap = fraction * self.total_bytes

    def empty_cache(self):
        pass

    def reserved(self):
        return self.held

    def step_peak(self, batch):
        need = batch * 100 * MIB
        if self.cap is not None and self.cap < 1.0 * self.total_bytes and self.held + need > self.cap:
            raise self.error or RuntimeError(f"CUDA out of memory. Tried to allocate {need >> 20} MiB. GPU 0 has a "
                                             "total capacity of 79.19 GiB")
        return need


def test_a_cuda_oom_is_recognised_and_the_step_redone_at_half(tmp_path):
    fake = FakeCuda()
    check = run_check(by_name(cuda, "cuda.oom_recovery"), Context(home=tmp_path, shared={"cuda": fake}))
    assert check.status == "pass", check.why
    assert [size for size, _ in check.figures["tried"]] == [8, 4]
    assert "CUDA out of memory" in check.figures["tried"][0][1] and check.figures["tried"][1] == (4, "ok")
    assert fake.cap == fake.total_bytes  # the cap is lifted afterwards

    check = run_check(by_name(cuda, "cuda.oom_recovery"),
                      Context(home=tmp_path, shared={"cuda": FakeCuda(error=RuntimeError("CUBLAS_STATUS_ALLOC"))}))
    assert check.status == "fail" and "does not take for an out-of-memory" in check.why


def test_mem_get_info_and_the_budget(tmp_path):
    check = run_check(by_name(cuda, "cuda.mem_get_info"), Context(home=tmp_path, shared={"cuda": FakeCuda()}))
    assert check.status == "pass", check.why
    assert check.figures["budget_bytes"] == int((80 << 30) * check.figures["budget_fraction"])
    busy = FakeCuda(free=10 << 30)  # another process holds most of the GPU
    check = run_check(by_name(cuda, "cuda.mem_get_info"), Context(home=tmp_path, shared={"cuda": busy}))
    assert check.status == "fail" and "other processes use the GPU" in check.why


def test_cuda_checks_skip_without_a_gpu_and_losses_are_judged_finite(tmp_path):
    absent = FakeCuda()
    absent.available = lambda: False
    for spec in cuda.CHECKS:
        check = run_check(spec, Context(home=tmp_path, shared={"cuda": absent}))
        assert (check.status, check.why) == ("skipped", "no CUDA device")
    assert cuda.finite_losses([{"loss": 0.7}, {"loss": 0.6}]) == (2, [])
    assert cuda.finite_losses([{"loss": 0.7}, {"loss": float("nan")}, {"loss": None}])[1][1] is None


def test_the_agent_script_reports_folders_and_traps_sigterm(tmp_path):
    """The throwaway agent's script itself, run as launchd would run it: PYTHON SCRIPT PATHS..."""
    import os
    import signal
    import sys
    import time

    script, out = tmp_path / "agent.py", tmp_path / "agent.out"
    script.write_text(macos_agent.AGENT_SCRIPT)
    locked = tmp_path / "locked dir"
    locked.mkdir(mode=0o000)
    (tmp_path / "data.jsonl").write_text("{}\n")
    agent = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(tmp_path / "nope"), str(locked),
                              str(tmp_path / "data.jsonl")],
                             env={**os.environ, "MTLD_SELFTEST_OUT": str(out)})
    try:
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = out.read_text().splitlines()
        assert lines[:4] == [f"python\t{sys.executable}\t{sys.prefix}", "import\tok", f"ok\t{tmp_path}",
                             f"missing\t{tmp_path / 'nope'}"]
        assert lines[4] == (f"ok\t{locked}" if os.geteuid() == 0 else f"denied\t{locked}")  # root reads anything
        assert lines[5] == f"ok\t{tmp_path / 'data.jsonl'}"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=5) == 0  # at once, not after the sleep: the wait is interruptible
        assert out.read_text().splitlines()[-1] == "SIGTERM"
    finally:
        agent.kill()
        locked.chmod(0o700)
