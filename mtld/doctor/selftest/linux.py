"""Checks for Linux: the memory signals the daemon decides by (PSI, the cgroup), and the systemd
pieces `mtld agent install` and sleep prevention rely on. Commands go through ctx.runner."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mtld.doctor.selftest.base import Context, Failed, Skipped, Spec


def _linux(ctx: Context) -> None:
    if not ctx.platform.startswith("linux"):
        raise Skipped("Linux only")


def check_psi(ctx: Context) -> dict[str, Any]:
    """PSI (/proc/pressure/memory; kernel 4.20+, Documentation/accounting/psi.rst) read by mtld's own probe."""
    _linux(ctx)
    from mtld.memory.linux import LinuxProbe
    from mtld.config.settings import MemorySettings

    reading = LinuxProbe(MemorySettings(), root=ctx.shared.get("root", Path("/"))).read()
    detail = reading.detail
    figures = {"level": reading.level.value, "available_bytes": reading.available_bytes,
               "total_bytes": reading.total_bytes, "psi_some_avg10": detail.get("psi_some_avg10"),
               "psi_full_avg10": detail.get("psi_full_avg10"), "notes": detail.get("notes", [])}
    if figures["psi_some_avg10"] is None:
        raise Failed("PSI is unreadable (a kernel without CONFIG_PSI, or booted with psi=0): mtld sees pressure "
                     "only through available memory", figures)
    return figures


def check_cgroup(ctx: Context) -> dict[str, Any]:
    """The cgroup this process runs in and its memory limit (a container's or a systemd slice's)."""
    _linux(ctx)
    from mtld.memory.linux import cgroup_usage, find_cgroup

    root = ctx.shared.get("root", Path("/"))
    cgroup = find_cgroup(root)
    if cgroup is None:
        return {"cgroup": None, "limit_bytes": None, "note": "no memory cgroup found: the system's figures decide"}
    usage = cgroup_usage(cgroup, root / "sys/fs/cgroup")
    return {"cgroup": cgroup.name, "version": cgroup.version,
            "limit_bytes": usage.limit_bytes if usage else None, "used_bytes": usage.used_bytes if usage else None}


def check_unit_verify(ctx: Context) -> dict[str, Any]:
    """`systemd-analyze verify` accepts the unit mtld writes (under a throwaway name, never installed)."""
    _linux(ctx)
    if not shutil.which("systemd-analyze"):
        raise Skipped("systemd-analyze is not installed (no systemd here): `mtld agent install` cannot be used; "
                      "run `mtld daemon` under your own supervisor")
    from mtld.platform import systemd
    from mtld.platform.agent import stop_grace_s
    from mtld.config.settings import Settings

    settings = Settings.model_construct()
    unit = ctx.home / f"mtld-selftest-{ctx.label_suffix}.service"
    env = {"PATH": os.path.dirname(ctx.python), "MTLD_HOME": str(ctx.home)}
    unit.write_text(systemd.render_unit([ctx.python, "-m", "mtld", "daemon"], env, stop_grace_s(settings)))
    result = ctx.runner.run(["systemd-analyze", "verify", str(unit)])
    said = (result.stderr or "").strip()
    figures = {"unit": unit.name, "exit_code": result.returncode, "output": said[-500:] or None}
    if result.returncode != 0 or unit.name in said:
        raise Failed(f"systemd-analyze rejects or warns about the unit: {said[-300:] or result.returncode}", figures)
    return figures


def check_user_bus(ctx: Context) -> dict[str, Any]:
    """A systemd user instance on the user bus: what `mtld agent install` talks to."""
    _linux(ctx)
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    result = ctx.runner.run(["systemctl", "--user", "is-system-running"])
    figures = {"xdg_runtime_dir": runtime, "bus_socket": os.path.exists(os.path.join(runtime, "bus")),
               "systemctl_exit": result.returncode,
               "state": (result.stdout or result.stderr).strip()[:200] or None}
    if result.returncode == 127:
        raise Skipped("no systemctl: no systemd user instance, so `mtld agent install` cannot be used here; "
                      "run `mtld daemon` under your own supervisor (tmux, a container's init)")
    # systemctl(1) is-system-running: running, degraded, starting... or "offline" (no manager answers)
    if figures["state"] not in ("running", "degraded", "starting", "initializing", "maintenance"):
        raise Skipped(f"no systemd user instance answers ({figures['state']}): a session without systemd --user "
                      "(a container, ssh without lingering), so `mtld agent install` will fail here; log in "
                      "normally or run `loginctl enable-linger`, or run `mtld daemon` yourself")
    return figures


def check_inhibit(ctx: Context) -> dict[str, Any]:
    """`systemd-inhibit` can take an idle/sleep lock through logind (what the daemon does during a run)."""
    _linux(ctx)
    if not shutil.which("systemd-inhibit"):
        raise Skipped("systemd-inhibit is not installed: the daemon cannot keep the machine awake during a run "
                      "(fine on a server that never sleeps)")
    result = ctx.runner.run(["systemd-inhibit", "--what=idle:sleep", "--who=mtld", "--why=mtld selftest",
                             "--mode=block", "true"])
    figures = {"exit_code": result.returncode, "output": (result.stderr or "").strip()[:200] or None}
    if result.returncode != 0:
        raise Skipped(f"systemd-inhibit is installed but logind does not answer ({figures['output']}): runs go "
                      "without sleep prevention (fine on a server or in a container, which do not idle-sleep)")
    return figures


CHECKS = [
    Spec("linux.psi", "linux", "without PSI mtld cannot see memory pressure building up, only free memory running "
         "out: a run may be slowed by reclaim or killed before it scales down.", check_psi),
    Spec("linux.cgroup", "linux", "a container's memory limit mtld cannot read is a limit it cannot respect: "
         "the OOM killer ends the run instead of a scale-down.", check_cgroup),
    Spec("linux.systemd_unit", "linux", "systemd would refuse or misread the unit: the daemon would not start at "
         "login or restart after a crash.", check_unit_verify),
    Spec("linux.user_bus", "linux", "without a user systemd instance `mtld agent install` cannot install the "
         "daemon; it must be started by hand.", check_user_bus),
    Spec("linux.sleep_inhibit", "linux", "the machine may suspend when idle in the middle of a run.", check_inhibit),
]
