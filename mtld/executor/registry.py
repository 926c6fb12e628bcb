"""The executors mtld knows, by kind: the built-in ones, any a package registers under the entry point
group `mtld.executors`, and any registered at run time (`register`, e.g. by a test).

`plugin_for(settings)` is how the rest of mtld reaches an executor: it checks the kind and that kind's own
settings table (`[executor.KIND]`, with the kind's model) and raises SettingsError with one line per problem,
worded as the other settings' problems are.
"""

from __future__ import annotations

import json
import types
import typing
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mtld.config.settings import Settings, SettingsError, problem_line, problem_lines
from mtld.executor import Executor, ExecutorPlugin
from mtld.executor.local import LocalPlugin
from mtld.executor.ray.plugin import RayPlugin

ENTRY_POINT_GROUP = "mtld.executors"
P = TypeVar("P", bound=type[ExecutorPlugin])

_kinds: dict[str, type[ExecutorPlugin]] = {}
_loaded_entry_points = False


def register(plugin: P) -> P:
    """Make a kind of executor known (a second one of the same kind replaces the first)."""
    _kinds[plugin.kind] = plugin
    return plugin


def unregister(kind: str) -> None:
    _kinds.pop(kind, None)


def kinds() -> dict[str, type[ExecutorPlugin]]:
    """Every known kind: the built-in ones first, then those of installed packages."""
    global _loaded_entry_points
    if not _loaded_entry_points:
        _loaded_entry_points = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            register(entry.load())
    return dict(_kinds)


def kind(name: str) -> type[ExecutorPlugin] | None:
    return kinds().get(name)


def plugin_for(settings: Settings, name: str | None = None) -> ExecutorPlugin:
    """The executor `executor.kind` (or `name`) names, with its settings table checked. SettingsError says
    what is wrong, one line per problem."""
    name = name or settings.executor.kind
    plugin = kind(name)
    if plugin is None:
        raise SettingsError(problem_line(("executor", "kind"), f"unknown executor {name!r} (one of "
                                                              f"{', '.join(sorted(kinds()))})", settings.config_file))
    if name == settings.executor.kind and (why := plugin.unavailable()):
        raise SettingsError(problem_line(("executor", "kind"), f"{name!r} {why}", settings.config_file))
    return plugin(settings, _section(plugin, settings))


def check_settings(settings: Settings) -> None:
    """Refuse an unknown kind, a kind this machine cannot use, and a bad table of any known kind (each
    command refuses bad settings when it starts, not when a run would need them)."""
    plugin_for(settings)
    tables = settings.executor.model_extra or {}
    unknown = sorted(set(tables) - set(kinds()))
    if unknown:
        raise SettingsError(problem_line(("executor", unknown[0]), "unknown key", settings.config_file))
    for name in tables:
        if name != settings.executor.kind:
            plugin_for(settings, name)


def make_executor(settings: Settings, name: str | None = None) -> Executor:
    """The executor itself, for the daemon (a remote one connects only when first asked)."""
    return plugin_for(settings, name).executor()


def _section(plugin: type[ExecutorPlugin], settings: Settings) -> BaseModel | None:
    if plugin.settings_model is None:
        return None
    raw = settings.executor.section(plugin.kind)
    try:
        return plugin.settings_model.model_validate(_json_fields(plugin.settings_model, raw))
    except ValidationError as e:
        raise SettingsError(problem_lines(e, settings.config_file, within=("executor", plugin.kind))) from None


def _json_fields(model: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    """A table or list set in the environment arrives as text (MTLD_EXECUTOR__RAY__RESOURCES='{"a": 1}'): read
    it as JSON, as pydantic-settings does for the other settings (a table in config.toml is one already)."""
    out = dict(raw)
    for name, field in model.model_fields.items():
        value = out.get(name)
        if isinstance(value, str) and _is_container(field.annotation):
            try:
                out[name] = json.loads(value)
            except ValueError:
                pass  # the model says what is wrong with it
    return out


def _is_container(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, types.UnionType):
        return any(_is_container(a) for a in typing.get_args(annotation))
    return origin in (dict, list) or (isinstance(origin, type) and issubclass(origin, BaseModel))


register(LocalPlugin)
register(RayPlugin)
