"""The operating system around the daemon: its service manager and the machine's power.

`agent` installs `mtld daemon` as a launchd LaunchAgent (macOS) or a systemd
user unit (Linux); `launchd` and `systemd` render their files and command
lines; `power` keeps the machine awake during a run, reads the battery and
sends desktop notifications. Everything that touches the system goes through
a `Runner` (see `runner`) or a tool's argv, so it can be checked here without
launchd, systemd or a desktop.
"""
