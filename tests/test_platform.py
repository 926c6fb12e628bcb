"""The service-manager agent, sleep inhibition, battery and notifications.

launchd, systemd and a desktop are not here: plans and argv lists are checked
exactly, commands go through a RecordingRunner, and what can run for real
(writing files, the sleep inhibitor's process handling, notify) does.
"""

from __future__ import annotations

import configparser
import math
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from mtld.platform import launchd, power, systemd
from mtld.platform.agent import (
    AgentError,
    AgentPlan,
    SubprocessRunner,
    agent_status,
    apply,
    describe,
    example_plist,
    plan_install,
    plan_uninstall,
)
from mtld.daemon.loop import FORCED_STOP_GRACE_S
from mtld.platform.agent import WaitUntilGone
from mtld.platform.privacy import protected_place
from mtld.config.settings import DaemonSettings, Settings
from mtld.testing import RecordingRunner

REPO = Path(__file__).resolve().parents[1]
UID = 501
PYTHON = "/Users/ann/venvs/mtld/bin/python"


def settings(stop_timeout_s: float = 15.0, home: Path | None = None) -> Settings:
    # model_construct: defaults only, whatever MTLD_* this shell has set
    return Settings.model_construct(home=home, daemon=DaemonSettings(stop_timeout_s=stop_timeout_s))


def mac_install(tmp_path: Path, **kw) -> tuple[AgentPlan, Path]:
    kw.setdefault("env", {})
    plan = plan_install(kw.pop("settings", settings()), platform="darwin", python=PYTHON, uid=UID, home=tmp_path, **kw)
    return plan, tmp_path / "Library/LaunchAgents/io.mtld.daemon.plist"


def linux_install(tmp_path: Path, **kw) -> tuple[AgentPlan, Path]:
    kw.setdefault("env", {})
    plan = plan_install(kw.pop("settings", settings()), platform="linux", python="/opt/env/bin/python", uid=1000,
                        home=tmp_path, **kw)  # fmt: skip
    return plan, tmp_path / ".config/systemd/user/mtld.service"


# ------------------------------------------------------------------ launchd


def test_the_plist_parses_and_holds_the_keys(tmp_path):
    plan, path = mac_install(tmp_path, settings=settings(stop_timeout_s=12.3))
    plist = plistlib.loads(plan.files[path])

    assert plist["Label"] == "io.mtld.daemon"
    assert plist["ProgramArguments"] == [PYTHON, "-P", "-m", "mtld", "daemon"]  # -P: never the working folder's code
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Interactive"
    # the daemon's worst case: 12.3 s for the checkpoint, 5 s after its SIGKILL, then a margin to record it
    assert plist["ExitTimeOut"] == math.ceil(12.3 + FORCED_STOP_GRACE_S) + 10 == 28
    assert plist["ThrottleInterval"] == 10
    logs = tmp_path / "Library/Logs/mtld"
    assert plist["StandardOutPath"] == str(logs / "daemon.stdout.log")
    assert plist["StandardErrorPath"] == str(logs / "daemon.stderr.log")
    assert plan.dirs == [logs]  # launchd does not create the folder
    assert plist["EnvironmentVariables"] == {
        "PATH": "/Users/ann/venvs/mtld/bin:/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "PYTHONUNBUFFERED": "1",
    }
    assert plist["Umask"] == 0o077


def test_mtld_home_and_config_are_carried_into_the_agent(tmp_path):
    env = {"MTLD_HOME": str(tmp_path / "state"), "MTLD_CONFIG": str(tmp_path / "c.toml"), "MTLD_LOG_LEVEL": "debug"}
    plan, path = mac_install(tmp_path, settings=settings(home=tmp_path / "state"), env=env)
    plist = plistlib.loads(plan.files[path])

    carried = plist["EnvironmentVariables"]
    assert carried["MTLD_HOME"] == str(tmp_path / "state")
    assert carried["MTLD_CONFIG"] == str(tmp_path / "c.toml")
    assert "MTLD_LOG_LEVEL" not in carried
    assert plist["StandardErrorPath"] == str(tmp_path / "state/logs/daemon.stderr.log")

    named = tmp_path / "other.toml"  # --config on the command line wins over MTLD_CONFIG
    plan, path = mac_install(tmp_path, env=env, config=named)
    assert plistlib.loads(plan.files[path])["EnvironmentVariables"]["MTLD_CONFIG"] == str(named)


def test_the_interpreter_path_is_made_absolute_but_not_resolved(tmp_path, monkeypatch):
    real = tmp_path / "base/python3"
    real.parent.mkdir()
    real.touch()
    venv = tmp_path / "venv/bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(real)
    monkeypatch.chdir(tmp_path)

    plan = plan_install(settings(), platform="darwin", python="venv/bin/python", uid=UID, home=tmp_path, env={})
    plist = plistlib.loads(plan.files[launchd.plist_path(tmp_path)])
    python = plist["ProgramArguments"][0]
    assert python == os.path.join(os.getcwd(), "venv/bin/python")
    assert Path(python).is_symlink()  # the venv's own, or its packages are lost


def test_the_checked_in_example_is_what_the_code_renders():
    checked_in = (REPO / "launchd/io.mtld.daemon.plist").read_bytes()
    assert checked_in == example_plist(), (
        "launchd/io.mtld.daemon.plist is stale: "
        ".venv/bin/python -m mtld.platform.agent > launchd/io.mtld.daemon.plist"
    )
    example = plistlib.loads(checked_in)
    assert example["ProgramArguments"][0] == "/Users/you/.venv/bin/python"
    assert example["StandardOutPath"] == "/Users/you/Library/Logs/mtld/daemon.stdout.log"


class FakeClock:
    """monotonic() for the wait loop: advances only when the code sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


NOT_FOUND = dict(returncode=113, stderr='Could not find service "io.mtld.daemon" in domain for port')


def test_install_boots_out_waits_until_gone_writes_the_plist_and_bootstraps_without_kickstart(tmp_path):
    plan, path = mac_install(tmp_path)
    runner = RecordingRunner().on("launchctl", "bootout", **NOT_FOUND).on("launchctl", "print", **NOT_FOUND)
    clock = FakeClock()

    apply(plan, runner, sleep=clock.sleep, clock=clock)

    assert runner.calls == [
        ["launchctl", "bootout", "gui/501/io.mtld.daemon"],  # not loaded yet: ignored
        ["launchctl", "print", "gui/501/io.mtld.daemon"],  # gone at once: no wait
        ["launchctl", "enable", "gui/501/io.mtld.daemon"],  # a label disabled earlier would never start
        ["launchctl", "bootstrap", "gui/501", str(path)],  # RunAtLoad (implied by KeepAlive) starts it
    ]  # and no `kickstart -k`: it would SIGKILL the daemon bootstrap just started
    assert clock.slept == []
    assert plistlib.loads(path.read_bytes())["Label"] == "io.mtld.daemon"
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "Library/Logs/mtld").is_dir()
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_reinstall_during_a_run_waits_for_the_old_daemon_before_bootstrap(tmp_path):
    plan, path = mac_install(tmp_path)
    written_when = []
    runner = RecordingRunner()
    runner.on("launchctl", "print", stdout=LAUNCHCTL_PRINT.replace("state = running", "state = SIGTERMed"))
    runner.on("launchctl", "print", stdout=LAUNCHCTL_PRINT.replace("state = running", "state = SIGTERMed"))
    runner.on("launchctl", "print", **NOT_FOUND)
    clock = FakeClock()

    def sleep(seconds):
        written_when.append(path.exists())
        clock.sleep(seconds)

    apply(plan, runner, sleep=sleep, clock=clock)

    assert [c[1] for c in runner.calls] == ["bootout", "print", "print", "print", "enable", "bootstrap"]
    assert clock.slept == [0.5, 0.5]
    assert written_when == [False, False]  # the plist is written only once the old daemon is gone


def test_the_wait_is_bounded_by_exit_timeout_plus_a_margin_and_changes_nothing(tmp_path):
    plan, path = mac_install(tmp_path, settings=settings(stop_timeout_s=15))
    [wait] = [c for c in plan.commands if isinstance(c, WaitUntilGone)]
    assert wait.timeout_s == plistlib.loads(plan.files[path])["ExitTimeOut"] + 10 == 40
    runner = RecordingRunner().on("launchctl", "print", stdout=LAUNCHCTL_PRINT)  # never goes
    clock = FakeClock()

    with pytest.raises(AgentError, match=r"still there 40 s after .* state = running"):
        apply(plan, runner, sleep=clock.sleep, clock=clock)

    assert clock.now - 1000.0 == pytest.approx(40.0)
    assert "bootstrap" not in [c[1] for c in runner.calls]
    assert not path.exists()  # nothing written: the old agent is left as it was


def test_bootstrap_is_retried_while_launchd_still_removes_the_old_agent(tmp_path):
    plan, _ = mac_install(tmp_path)
    runner = RecordingRunner().on("launchctl", "print", **NOT_FOUND)
    runner.on("launchctl", "bootstrap", returncode=5, stderr="Bootstrap failed: 5: Input/output error")
    runner.on("launchctl", "bootstrap", returncode=0)
    slept = []

    apply(plan, runner, sleep=slept.append)

    assert [c[1] for c in runner.calls] == ["bootout", "print", "enable", "bootstrap", "bootstrap"]
    assert slept == [2.0]


def test_a_failing_checked_command_raises_with_the_command_and_its_stderr(tmp_path):
    plan, path = mac_install(tmp_path)
    runner = RecordingRunner().on("launchctl", "print", **NOT_FOUND)
    runner.on("launchctl", "bootstrap", returncode=5, stderr="Bootstrap failed: 5: Input/output error\n")

    with pytest.raises(AgentError) as e:
        apply(plan, runner, sleep=lambda s: None)

    assert str(e.value) == (
        f"`launchctl bootstrap gui/501 {path}` failed (exit status 5): Bootstrap failed: 5: Input/output error"
    )
    assert [c[1] for c in runner.calls] == ["bootout", "print", "enable"] + ["bootstrap"] * 4


# ------------------------------------------------------------------ what the agent carries from the shell

SHELL = {  # a user's ~/.zshrc, which launchd never reads
    "HF_HOME": "~/hf", "HF_HUB_CACHE": "/data/hub", "REQUESTS_CA_BUNDLE": "/etc/corp-ca.pem",
    "SSL_CERT_FILE": "/etc/corp-ca.pem", "HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "localhost,.corp",
    "https_proxy": "http://proxy.corp:3128", "EDITOR": "vim", "HF_DATASETS_CACHE": "/x",
}


def environment_of(plan: AgentPlan, path: Path) -> dict[str, str]:
    """The environment the agent's file gives the daemon: the plist's EnvironmentVariables, the unit's Environment=."""
    if path.suffix == ".plist":
        return plistlib.loads(plan.files[path])["EnvironmentVariables"]
    return dict(word.split("=", 1) for word in shlex.split(read_unit(plan.files[path])["Service"]["Environment"]))


@pytest.mark.parametrize("install", [mac_install, linux_install])
def test_the_users_hugging_face_proxy_and_ca_settings_are_carried(tmp_path, monkeypatch, install):
    monkeypatch.setenv("HOME", str(tmp_path))  # for ~ in HF_HOME
    plan, path = install(tmp_path, env=SHELL)
    carried = environment_of(plan, path)
    assert {k: v for k, v in carried.items() if k not in ("PATH", "PYTHONUNBUFFERED")} == {
        "HF_HOME": str(tmp_path / "hf"),  # made absolute: launchd expands no ~
        "HF_HUB_CACHE": "/data/hub", "REQUESTS_CA_BUNDLE": "/etc/corp-ca.pem", "SSL_CERT_FILE": "/etc/corp-ca.pem",
        "HTTPS_PROXY": "http://proxy.corp:3128", "https_proxy": "http://proxy.corp:3128", "NO_PROXY": "localhost,.corp",
    }  # and nothing else of the shell's
    [note] = [n for n in plan.notes if n.startswith("Carried from this shell")]
    assert note == ("Carried from this shell into the agent's environment: HF_HOME, HF_HUB_CACHE, REQUESTS_CA_BUNDLE, "
                    "SSL_CERT_FILE, HTTPS_PROXY, https_proxy, NO_PROXY.")
    text = describe(plan)
    assert "HF_HOME" in text and "http://proxy.corp:3128" in text  # --dry-run shows what is carried
    assert path not in plan.private  # nothing secret in it: the usual 0644


@pytest.mark.parametrize("install", [mac_install, linux_install])
def test_the_token_goes_to_a_user_only_file_never_into_the_agents_file(tmp_path, monkeypatch, install):
    token = "hf_SECRETsecretSECRET"
    plan, path = install(tmp_path, env={"HF_TOKEN": token, "MTLD_HOME": str(tmp_path / "state")})
    token_file = tmp_path / "state/hf-token"
    assert token not in plan.files[path].decode()
    assert environment_of(plan, path)["HF_TOKEN_PATH"] == str(token_file)
    text = describe(plan)
    assert token not in text and f"write {token_file} (0600: yours only):\n    <hidden>" in text
    assert any(f"it goes to {token_file}" in n for n in plan.notes)

    apply(plan, RecordingRunner().on("launchctl", "print", **NOT_FOUND))
    assert token_file.read_text() == token + "\n"
    assert token_file.stat().st_mode & 0o777 == 0o600 and token_file.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o644
    from huggingface_hub.utils import get_token  # what a run finds with the agent's environment (no HF_TOKEN)

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(token_file))  # read from HF_TOKEN_PATH at import
    assert get_token() == token


@pytest.mark.parametrize("install", [mac_install, linux_install])
def test_a_clusters_token_file_set_in_the_shell_is_carried_as_its_path_never_its_token(tmp_path, monkeypatch, install):
    monkeypatch.setenv("HOME", str(tmp_path))
    token_file = tmp_path / ".config/mtld/ray-token"
    shell = {"MTLD_EXECUTOR__RAY__TOKEN_FILE": "~/.config/mtld/ray-token", "EDITOR": "vim"}
    files = {"executor.ray.token_file": token_file}  # what the executor's settings name (ExecutorPlugin.setting_files)
    plan, path = install(tmp_path, env=shell, setting_files=files)
    assert environment_of(plan, path)["MTLD_EXECUTOR__RAY__TOKEN_FILE"] == str(token_file)  # absolute: no ~ there
    assert path not in plan.private  # a path, not a secret
    [note] = [n for n in plan.notes if n.startswith("Carried from this shell")]
    assert note.endswith("MTLD_EXECUTOR__RAY__TOKEN_FILE.")
    # set in the config file instead: the agent reads that file, so nothing is carried (and the config wins later)
    plan, path = install(tmp_path, env={"EDITOR": "vim"}, setting_files=files)
    assert "MTLD_EXECUTOR__RAY__TOKEN_FILE" not in environment_of(plan, path)


def test_a_token_file_in_a_folder_macos_hides_from_agents_is_warned_about(tmp_path):
    token_file = tmp_path / "Documents/ray-token"
    plan, _ = mac_install(tmp_path, setting_files={"executor.ray.token_file": token_file})
    assert any("executor.ray.token_file" in n and str(token_file) in n for n in plan.notes)


def test_a_proxy_password_makes_the_agents_file_private_and_is_hidden_in_the_dry_run(tmp_path):
    plan, path = mac_install(tmp_path, env={"HTTPS_PROXY": "http://ann:pa&ss@proxy:3128"})
    assert plistlib.loads(plan.files[path])["EnvironmentVariables"]["HTTPS_PROXY"] == "http://ann:pa&ss@proxy:3128"
    text = describe(plan)
    assert "pa&ss" not in text and "pa&amp;ss" not in text and "http://ann:<hidden>@proxy:3128" in text
    assert f"write {path} (0600: yours only):" in text
    apply(plan, RecordingRunner().on("launchctl", "print", **NOT_FOUND))
    assert path.stat().st_mode & 0o777 == 0o600  # launchctl(1): a user's plist must only not be group/world-writable


# ------------------------------------------------------------------ launchd details


def test_bootstrap_from_an_ssh_session_is_one_clear_line_and_not_retried(tmp_path):
    plan, _ = mac_install(tmp_path)
    runner = RecordingRunner().on("launchctl", "print", **NOT_FOUND)
    runner.on("launchctl", "bootstrap", returncode=125, stderr="Bootstrap failed: 125: Domain does not support "
              "specified action\n")
    slept = []

    with pytest.raises(AgentError) as e:
        apply(plan, runner, sleep=slept.append)

    assert "\n" not in str(e.value) and "no GUI login session" in str(e.value) and "SSH" in str(e.value)
    assert [c[1] for c in runner.calls] == ["bootout", "print", "enable", "bootstrap"] and slept == []


def test_exit_timeout_is_capped_at_a_minute_by_the_settings(tmp_path):
    from mtld.config.settings import SettingsError, load_settings

    plan, path = mac_install(tmp_path, settings=settings(stop_timeout_s=45))
    assert plistlib.loads(plan.files[path])["ExitTimeOut"] == 60
    config = tmp_path / "config.toml"
    config.write_text("[daemon]\nstop_timeout_s = 45.5\n")
    with pytest.raises(SettingsError) as e:
        load_settings(config)
    assert str(e.value) == (f"{config}: daemon.stop_timeout_s - at most 45 s: with 5 s to reap the child and 10 s to "
                            "record the run, launchd's ExitTimeOut must stay within 60 s")


@pytest.mark.parametrize(("listing", "disabled"), [
    ('disabled services = {\n\t"com.apple.x" => enabled\n\t"io.mtld.daemon" => disabled\n}\n', True),
    ('disabled services = {\n\t"io.mtld.daemon" => true\n}\n', True),  # as older launchctl prints it
    ('disabled services = {\n\t"io.mtld.daemon" => enabled\n}\n', False),
    ('disabled services = {\n\t"io.mtld.daemon.old" => disabled\n}\n', False),  # another label
])  # fmt: skip
def test_status_says_when_launchd_has_the_agent_disabled(tmp_path, listing, disabled):
    apply(mac_install(tmp_path)[0], RecordingRunner().on("launchctl", "print", **NOT_FOUND))
    runner = RecordingRunner().on("launchctl", "print", **NOT_FOUND).on("launchctl", "print-disabled", stdout=listing)

    status = agent_status(runner, platform="darwin", uid=UID, home=tmp_path, env={})

    assert status["disabled"] is disabled and status["loaded"] is False
    if disabled:
        assert "Allow in the Background" in status["advice"] and "`mtld agent install` enables it" in status["advice"]
    else:
        assert status["advice"].startswith("installed but not loaded")


def test_status_from_an_ssh_session_explains_itself(tmp_path):
    runner = RecordingRunner().on("launchctl", returncode=125, stderr="Domain does not support specified action\n")
    status = agent_status(runner, platform="darwin", uid=UID, home=tmp_path, env={})
    assert "no GUI login session" in status["error"] and status["disabled"] is None


# ------------------------------------------------------------------ macOS privacy (TCC), with recorded paths

FRAMEWORK = "/Library/Frameworks/Python.framework/Versions/3.12"
HOMEBREW = "/opt/homebrew/Cellar/python@3.12/3.12.7/Frameworks/Python.framework/Versions/3.12"
ANN = Path("/Users/ann")


def recorded(links: dict[str, str]):
    """realpath() as a Mac answered it: the venv's python links to the interpreter it was made from."""
    return lambda path: links.get(path, path)


# (case, the agent's python, what it links to, its sys.prefix, MTLD_HOME, data, warned about, binary to grant)
TCC_CASES = [
    ("venv in ~/Documents, python.org", "/Users/ann/Documents/proj/.venv/bin/python", f"{FRAMEWORK}/bin/python3.12",
     None, None, [], ["the agent's Python environment (/Users/ann/Documents/proj/.venv) is in ~/Documents"],
     f"{FRAMEWORK}/Resources/Python.app"),
    ("venv in ~/Desktop, Homebrew", "/Users/ann/Desktop/x/venv/bin/python", f"{HOMEBREW}/bin/python3.12", None, None,
     [], ["the agent's Python environment (/Users/ann/Desktop/x/venv) is in ~/Desktop"],
     f"{HOMEBREW}/Resources/Python.app"),
    ("data on a USB stick", "/Users/ann/.venvs/mtld/bin/python", "/Users/ann/.pyenv/versions/3.12.4/bin/python3.12",
     None, None, [("job 4 data", "/Volumes/USB/corpus/train.jsonl")],
     ["job 4 data (/Volumes/USB/corpus/train.jsonl) is in /Volumes/USB (a removable or network volume)"],
     "/Users/ann/.pyenv/versions/3.12.4/bin/python3.12"),
    ("state on a network volume", "/Users/ann/.venvs/mtld/bin/python", "/usr/bin/python3", None, "/Volumes/nas/mtld",
     [], ["MTLD_HOME (/Volumes/nas/mtld) is in /Volumes/nas (a removable or network volume)"], "/usr/bin/python3"),
    ("conda in ~/Downloads, prefix elsewhere", "/opt/env/bin/python", "/Users/ann/Downloads/miniconda/bin/python3.12",
     "/opt/env", None, [], ["the binary behind it (/Users/ann/Downloads/miniconda/bin/python3.12) is in ~/Downloads"],
     "/Users/ann/Downloads/miniconda/bin/python3.12"),
    ("model in iCloud Drive", "/Users/ann/.venvs/mtld/bin/python", f"{FRAMEWORK}/bin/python3.12", None, None,
     [("job 2 model", "/Users/ann/Library/Mobile Documents/com~apple~CloudDocs/bert")],
     ["job 2 model (/Users/ann/Library/Mobile Documents/com~apple~CloudDocs/bert) is in iCloud Drive "
      "(~/Library/Mobile Documents)"],
     f"{FRAMEWORK}/Resources/Python.app"),
    ("nothing protected", "/Users/ann/.venvs/mtld/bin/python", f"{FRAMEWORK}/bin/python3.12", None, None,
     [("job 1 data", "/Users/ann/data/t.jsonl")], [], None),
]


@pytest.mark.parametrize(("python", "real", "prefix", "state", "data", "warned", "grant"),
                         [c[1:] for c in TCC_CASES], ids=[c[0] for c in TCC_CASES])
def test_install_checks_the_interpreter_state_and_data_for_privacy_protection(python, real, prefix, state, data,
                                                                              warned, grant):
    env = {"MTLD_HOME": state} if state else {}
    plan = plan_install(settings(), platform="darwin", python=python, prefix=prefix, uid=UID, home=ANN, env=env,
                        data_paths=[(what, Path(path)) for what, path in data], resolve=recorded({python: real}))
    warnings = [n.removeprefix("warning: ") for n in plan.notes if n.startswith("warning:")]
    assert [w.split(", which macOS hides")[0] for w in warnings] == warned
    advice = [n for n in plan.notes if "Full Disk Access" in n]
    if grant is None:
        assert advice == []
    else:
        [line] = advice
        assert f"add {grant} (press Cmd-Shift-G" in line and "move it out of ~/Documents" in line


def test_the_binary_that_runs_a_framework_python_is_inside_python_app():
    from mtld.platform.privacy import interpreter

    facts = interpreter("/Users/ann/Documents/p/.venv/bin/python",
                        resolve=recorded({"/Users/ann/Documents/p/.venv/bin/python": f"{HOMEBREW}/bin/python3.12"}))
    assert facts.prefix == "/Users/ann/Documents/p/.venv"
    assert facts.runs == f"{HOMEBREW}/Resources/Python.app/Contents/MacOS/Python"  # what pythonw.c execs
    assert facts.grant == f"{HOMEBREW}/Resources/Python.app"
    plain = interpreter("/usr/local/bin/python3.12", resolve=recorded({}))
    assert (plain.app, plain.grant) == (None, "/usr/local/bin/python3.12")


def test_install_warns_about_data_macos_hides_from_agents(tmp_path):
    docs = tmp_path / "Documents/corpus/train.jsonl"
    plan, _ = mac_install(tmp_path, settings=settings(home=tmp_path / "Desktop/mtld"),
                          data_paths=[("job 3 data", docs), ("job 4 data", tmp_path / "data/x.jsonl")])
    warnings = [n for n in plan.notes if n.startswith("warning:")]
    assert warnings == [
        f"warning: MTLD_HOME ({tmp_path}/Desktop/mtld) is in ~/Desktop, which macOS hides from agents unless allowed",
        f"warning: job 3 data ({docs}) is in ~/Documents, which macOS hides from agents unless allowed",
    ]
    [how] = [n for n in plan.notes if "Full Disk Access" in n]
    assert f"add {PYTHON} " in how and "move it out" in how
    assert not [n for n in mac_install(tmp_path)[0].notes if "Full Disk Access" in n]
    from_env = mac_install(tmp_path, env={"MTLD_HOME": str(tmp_path / "Downloads/m")})[0].notes  # as the agent gets it
    assert any(n.startswith("warning: MTLD_HOME") and "~/Downloads" in n for n in from_env)
    assert not [n for n in linux_install(tmp_path, data_paths=[("d", docs)])[0].notes if "Full Disk" in n]


@pytest.mark.parametrize(("path", "folder"), [
    ("Documents", "~/Documents"), ("Downloads/a/b.jsonl", "~/Downloads"), ("Desktop/../data/x", None),
    ("DocumentsX/x", None), ("Library/x", None), ("documents/x", "~/Documents"),  # APFS ignores case
    ("Library/Mobile Documents/com~apple~CloudDocs/d.jsonl", "iCloud Drive (~/Library/Mobile Documents)"),
])  # fmt: skip
def test_protected_folder(tmp_path, path, folder):
    assert protected_place(tmp_path / path, tmp_path) == folder


def test_uninstall_boots_out_and_removes_the_plist(tmp_path):
    plan, path = mac_install(tmp_path)
    apply(plan, RecordingRunner().on("launchctl", "print", **NOT_FOUND))
    runner = RecordingRunner()

    runner.on("launchctl", "print", **NOT_FOUND)
    apply(plan_uninstall(settings(), platform="darwin", uid=UID, home=tmp_path, env={}), runner)

    assert runner.calls == [["launchctl", "bootout", "gui/501/io.mtld.daemon"],
                            ["launchctl", "print", "gui/501/io.mtld.daemon"]]  # returns once the daemon is gone
    assert not path.exists()
    again = plan_uninstall(settings(), platform="darwin", uid=UID, home=tmp_path, env={})
    apply(again, RecordingRunner().on("launchctl", "print", **NOT_FOUND))  # nothing left to remove: fine


LAUNCHCTL_PRINT = """\
gui/501/io.mtld.daemon = {
\tactive count = 1
\tpath = /Users/ann/Library/LaunchAgents/io.mtld.daemon.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/ann/venvs/mtld/bin/python
\tendpoints = {
\t\t"io.mtld.x" = {
\t\t\tstate = active
\t\t}
\t}
\tpid = 4242
\tlast exit code = (never exited)
}
"""


def test_status_reads_launchctl_print(tmp_path):
    apply(mac_install(tmp_path)[0], RecordingRunner().on("launchctl", "print", **NOT_FOUND))
    runner = RecordingRunner().on("launchctl", "print", stdout=LAUNCHCTL_PRINT)

    status = agent_status(runner, platform="darwin", uid=UID, home=tmp_path, env={})

    assert runner.calls == [["launchctl", "print", "gui/501/io.mtld.daemon"], ["launchctl", "print-disabled", "gui/501"]]
    assert status == {
        "manager": "launchd", "name": "io.mtld.daemon", "file": str(launchd.plist_path(tmp_path)),
        "installed": True, "loaded": True, "running": True, "pid": 4242, "state": "running", "disabled": False,
        "error": None, "advice": None,
    }  # fmt: skip


# The lines launchd prints for an agent's settings (format strings "exit timeout = %u", "umask = %o";
# "spawn type = daemon (3)" is a real line for the default ProcessType, the number of "interactive" assumed).
LAUNCHCTL_PRINT_DETAILS = LAUNCHCTL_PRINT.replace("\tpid = 4242\n", """\
\tdomain = gui/501 [100003]
\tasid = 100003
\tminimum runtime = 10
\texit timeout = 30
\tumask = 77
\truns = 1
\tpid = 4242
\tspawn type = interactive (4)
""")


def test_print_details_read_exit_timeout_umask_and_process_type():
    details = launchd.parse_print_details(LAUNCHCTL_PRINT_DETAILS)
    assert details == {"exit_timeout_s": 30, "umask": 0o077, "process_type": "interactive",
                       "last_exit_code": "(never exited)"}
    assert launchd.parse_print(0, LAUNCHCTL_PRINT_DETAILS)["pid"] == 4242
    assert launchd.parse_print_details("")["exit_timeout_s"] is None


def test_status_of_an_agent_not_loaded(tmp_path):
    runner = RecordingRunner().on("launchctl", "print", returncode=113, stderr="Could not find service")
    status = agent_status(runner, platform="darwin", uid=UID, home=tmp_path, env={})
    assert (status["installed"], status["loaded"], status["running"], status["pid"]) == (False, False, False, None)
    assert status["error"] is None


# ------------------------------------------------------------------ systemd


def read_unit(text: bytes) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(text.decode())
    return unit


def test_the_systemd_unit(tmp_path):
    env = {"MTLD_HOME": "/data/my state/100%"}
    plan, path = linux_install(tmp_path, settings=settings(stop_timeout_s=30), env=env)
    unit = read_unit(plan.files[path])

    service = unit["Service"]
    assert service["ExecStart"] == "/opt/env/bin/python -P -m mtld daemon"
    assert Path(shlex.split(service["ExecStart"])[0]).is_absolute()
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"
    assert service["TimeoutStopSec"] == "45"  # 30 + FORCED_STOP_GRACE_S + a 10 s margin, as ExitTimeOut
    assert service["Environment"] == (
        "PATH=/opt/env/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin PYTHONUNBUFFERED=1 "
        '"MTLD_HOME=/data/my state/100%%"'  # quoted for the space, % doubled (systemd specifiers)
    )
    assert shlex.split(service["Environment"])[2] == "MTLD_HOME=/data/my state/100%%"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert plan.dirs == []


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_itself_accepts_the_unit(tmp_path):
    env = {"MTLD_HOME": str(tmp_path / "my state/100%")}
    plan = plan_install(settings(), platform="linux", python=sys.executable, uid=1000, home=tmp_path, env=env)
    [unit] = plan.files.values()
    path = tmp_path / "mtld.service"
    path.write_bytes(unit)

    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "mtld.service" not in result.stderr  # no warnings about our unit


@pytest.mark.skipif(not shutil.which("plutil"), reason="plutil is macOS's")
def test_plutil_accepts_the_plist(tmp_path):
    plan, path = mac_install(tmp_path, env={"MTLD_HOME": str(tmp_path / "a b")})
    apply(plan, RecordingRunner().on("launchctl", "print", **NOT_FOUND))
    result = subprocess.run(["plutil", "-lint", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_quoting():
    assert systemd.quote("/a b/python", expand_dollar=True) == '"/a b/python"'
    assert systemd.quote("/x$y/python", expand_dollar=True) == "/x$$y/python"
    assert systemd.quote('say "hi" \\', expand_dollar=False) == '"say \\"hi\\" \\\\"'


def test_the_unit_follows_xdg_config_home(tmp_path):
    plan, _ = linux_install(tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert list(plan.files) == [tmp_path / "cfg/systemd/user/mtld.service"]


def test_systemd_install_and_uninstall_commands(tmp_path):
    plan, path = linux_install(tmp_path)
    runner = RecordingRunner()
    apply(plan, runner)

    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "mtld.service"],
        ["systemctl", "--user", "restart", "mtld.service"],  # starts it, or picks up a changed unit
    ]
    assert read_unit(path.read_bytes())["Service"]["KillMode"] == "mixed"

    runner = RecordingRunner().on("systemctl", "--user", "disable", returncode=1, stderr="not loaded")
    apply(plan_uninstall(settings(), platform="linux", uid=1000, home=tmp_path, env={}), runner)
    assert runner.calls == [
        ["systemctl", "--user", "disable", "--now", "mtld.service"],  # before the file goes; failure ignored
        ["systemctl", "--user", "daemon-reload"],  # after
    ]
    assert not path.exists()


def test_linux_install_explains_lingering(tmp_path):
    plan, _ = linux_install(tmp_path)
    [linger] = [n for n in plan.notes if "loginctl enable-linger" in n]
    assert "log out" in linger


def test_status_reads_systemctl_show(tmp_path):
    runner = RecordingRunner().on(
        "systemctl", "--user", "show", stdout="LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=77\n"
    )
    status = agent_status(runner, platform="linux", uid=1000, home=tmp_path, env={})
    assert runner.calls == [
        ["systemctl", "--user", "show", "mtld.service", "--property=LoadState,ActiveState,SubState,MainPID"]
    ]
    assert (status["manager"], status["installed"], status["loaded"], status["running"], status["pid"]) == (
        "systemd", False, True, True, 77)  # fmt: skip
    assert status["state"] == "active/running"

    runner = RecordingRunner().on("systemctl", returncode=1, stderr="Failed to connect to bus: No medium found\n")
    status = agent_status(runner, platform="linux", uid=1000, home=tmp_path, env={})
    assert (status["loaded"], status["running"]) == (False, False)
    assert status["error"] == "Failed to connect to bus: No medium found"


# ------------------------------------------------------------------ both


def test_dry_run_describes_files_and_commands(tmp_path):
    plan, path = mac_install(tmp_path)
    text = describe(plan)
    assert f"write {path}:" in text
    assert "<string>Interactive</string>" in text
    assert "launchctl bootout gui/501/io.mtld.daemon  # failure ignored" in text
    assert f"launchctl bootstrap gui/501 {path}" in text
    assert "until ! launchctl print gui/501/io.mtld.daemon >/dev/null; do sleep 0.5; done  # at most 40 s" in text
    assert "launchctl enable gui/501/io.mtld.daemon\n" in text
    assert (text.index("bootout") < text.index("until") < text.index("<plist") < text.index("launchctl enable")
            < text.index("bootstrap"))
    assert "kickstart" not in text
    assert not path.exists()

    text = describe(linux_install(tmp_path)[0])
    assert "KillMode=mixed" in text and "systemctl --user enable mtld.service" in text
    assert "loginctl enable-linger" in text

    text = describe(plan_uninstall(settings(), platform="linux", uid=1000, home=tmp_path, env={}))
    assert f"rm -f {tmp_path}/.config/systemd/user/mtld.service" in text


def test_other_platforms_are_refused(tmp_path):
    with pytest.raises(AgentError, match="macOS .* and Linux"):
        plan_install(settings(), platform="win32")


def test_recording_runner_answers_in_turn_and_by_longest_prefix():
    runner = RecordingRunner().on("a", returncode=1).on("a", "b", returncode=2).on("a", "b", returncode=3)
    assert [runner.run(argv).returncode for argv in (["a"], ["a", "b"], ["a", "b", "c"], ["a", "b"], ["z"])] == [
        1, 2, 3, 3, 0]  # fmt: skip


def test_subprocess_runner_reports_a_missing_program_like_a_shell():
    result = SubprocessRunner().run(["mtld-no-such-program-here"])
    assert result.returncode == 127 and "not found" in result.stderr
    assert SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2; exit 3"]).returncode == 3


# ------------------------------------------------------------------ power


def test_inhibit_sleep_argv():
    assert power.inhibit_sleep_argv(42, "job 1", platform="darwin", which=lambda n: None) == [
        "caffeinate", "-i", "-w", "42"]  # fmt: skip
    found = lambda name: f"/usr/bin/{name}"  # noqa: E731
    assert power.inhibit_sleep_argv(42, "mtld job 1 is training", platform="linux", which=found) == [
        "systemd-inhibit", "--what=idle:sleep", "--who=mtld", "--why=mtld job 1 is training", "--mode=block",
        "tail", "--pid=42", "-f", "/dev/null",
    ]  # fmt: skip
    assert power.inhibit_sleep_argv(42, "x", platform="linux", which=lambda n: None) is None
    assert power.inhibit_sleep_argv(42, "x", platform="win32", which=lambda n: "x") is None


FAKE_SYSTEMD_INHIBIT = """\
#!/bin/sh
# Stands in for systemd-inhibit: drops its options and, like it, runs the command as a child.
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
"$@" &
wait $!
"""


@pytest.fixture
def fake_inhibit(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemd-inhibit"
    script.write_text(FAKE_SYSTEMD_INHIBIT)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def training_child():
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def waiter_of(inhibitor: power.SleepInhibitor) -> psutil.Process:
    """The `tail --pid` the fake systemd-inhibit started."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        children = psutil.Process(inhibitor.process.pid).children()
        if children and "tail" in children[0].name():
            return children[0]
        time.sleep(0.02)
    raise AssertionError("the inhibitor never started its command")


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # an orphan waiting for an init that may not reap
    except psutil.NoSuchProcess:
        return True


def soon(condition, timeout_s: float = 5.0) -> bool:
    """Signals are delivered asynchronously: give a signalled process a moment to go."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU tail --pid, as on Linux")


@pytest.mark.slow
@linux_only
def test_sleep_inhibitor_lives_with_the_run_and_ends_on_stop(fake_inhibit, training_child):
    inhibitor = power.SleepInhibitor(platform="linux")
    assert inhibitor.start(training_child.pid, "mtld job 1") is True
    tail = waiter_of(inhibitor)
    assert tail.cmdline() == ["tail", f"--pid={training_child.pid}", "-f", "/dev/null"]

    time.sleep(1.5)  # tail checks the pid every second: it must not have ended
    assert inhibitor.active and not gone(tail)

    inhibitor.stop()
    assert not inhibitor.active and inhibitor.process is None
    assert soon(lambda: gone(tail))  # the whole group was signalled, not just systemd-inhibit
    assert training_child.poll() is None
    inhibitor.stop()  # twice: fine


@pytest.mark.slow
@linux_only
def test_sleep_inhibitor_ends_by_itself_when_the_run_ends(fake_inhibit, training_child):
    inhibitor = power.SleepInhibitor(platform="linux")
    assert inhibitor.start(training_child.pid, "mtld job 1")
    tail = waiter_of(inhibitor)
    process = inhibitor.process

    training_child.kill()
    training_child.wait()  # the daemon reaps its child; a zombie would still count as alive

    assert process.wait(timeout=5) == 0
    assert soon(lambda: gone(tail)) and not inhibitor.active
    inhibitor.stop()


@pytest.mark.skipif(sys.platform != "darwin", reason="caffeinate is macOS's")
def test_caffeinate_lives_with_the_run_and_ends_on_stop(training_child):
    inhibitor = power.SleepInhibitor()
    assert inhibitor.start(training_child.pid, "mtld job 1") is True
    caffeinate = psutil.Process(inhibitor.process.pid)
    time.sleep(0.5)
    assert caffeinate.cmdline() == ["caffeinate", "-i", "-w", str(training_child.pid)] and inhibitor.active
    inhibitor.stop()
    assert gone(caffeinate)

    assert inhibitor.start(training_child.pid, "mtld job 1")
    process = inhibitor.process
    training_child.kill()
    assert process.wait(timeout=5) == 0  # caffeinate -w ends with the run


def test_sleep_inhibitor_without_a_tool_does_nothing():
    inhibitor = power.SleepInhibitor(platform="linux", which=lambda name: None)
    assert inhibitor.start(os.getpid(), "x") is False
    assert not inhibitor.active
    inhibitor.stop()


@linux_only
def test_an_inhibitor_that_gives_up_at_once_is_reported(tmp_path, monkeypatch, training_child):
    script = tmp_path / "systemd-inhibit"  # as the real one does with no logind to talk to
    script.write_text("#!/bin/sh\necho 'Failed to connect to bus: No such file or directory' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    inhibitor = power.SleepInhibitor(platform="linux")
    assert inhibitor.start(training_child.pid, "x") is False
    assert not inhibitor.active


def test_on_battery():
    battery = lambda plugged: lambda: SimpleNamespace(percent=50, secsleft=3600, power_plugged=plugged)  # noqa: E731
    assert power.on_battery(battery(False)) is True
    assert power.on_battery(battery(True)) is False
    assert power.on_battery(battery(None)) is None  # the sensor cannot tell
    assert power.on_battery(lambda: None) is None  # no battery


def test_notify_argv_escapes_applescript_strings():
    argv = power.notify_argv('Job "demo" failed', 'C:\\path\nout of memory', platform="darwin", which=lambda n: None)
    assert argv == [
        "osascript", "-e",
        'display notification "C:\\\\path out of memory" with title "Job \\"demo\\" failed"',
    ]  # fmt: skip
    assert power.applescript_string('a"b\\c') == '"a\\"b\\\\c"'


def test_notify_argv_on_linux():
    which = lambda name: f"/usr/bin/{name}" if name == "notify-send" else None  # noqa: E731
    assert power.notify_argv("mtld", "-1 jobs left", platform="linux", which=which) == [
        "notify-send", "--app-name=mtld", "--", "mtld", "-1 jobs left"]  # fmt: skip
    assert power.notify_argv("t", "m", platform="linux", which=lambda n: None) is None


def test_notify_runs_the_notifier_and_never_raises(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "notify-send"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    assert power.notify("mtld: demo", "succeeded in 2 h", platform="linux") is True
    assert (tmp_path / "args").read_text().splitlines() == ["--app-name=mtld", "--", "mtld: demo", "succeeded in 2 h"]

    script.write_text("#!/bin/sh\nexit 1\n")  # no session bus, say
    assert power.notify("t", "m", platform="linux") is False
    assert power.notify("t", "m", platform="linux", which=lambda n: None) is False
    monkeypatch.setenv("PATH", str(bin_dir))  # no osascript on this PATH, even on a Mac
    assert power.notify("t", "m", platform="darwin") is False
