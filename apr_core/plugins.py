"""Plugin discovery and the technique registry.

Plugins are modules named in the ``apr`` entry-point group; built-ins are
listed there exactly like third-party packages, one entry point per family
(``merge``, ``prune``, ``quantize``, ``eval``) plus ``formats``.
``APR_PLUGINS`` (comma list of entry-point names) allow-lists plugins;
``APR_DISABLE_PLUGINS`` deny-lists entry points or single techniques, by
technique name (``ties``) or ``kind/name`` (``merge/ties``). After loading,
`check_pending` makes a misspelt hook name fail loudly, then every plugin's
``apr_register_techniques`` is called with a callback that records which
distribution supplied each technique.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import AprError, PluginError
from .technique import EVALUATE, Kind, Technique

GROUP = "apr"
ENV_ALLOW = "APR_PLUGINS"
ENV_DENY = "APR_DISABLE_PLUGINS"

from . import hookimpl  # noqa: E402  (one marker, re-exported)


@dataclass(frozen=True)
class Registered:
    technique: Technique
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str


class _CoreRunner:
    """The default implementations of apr_transform / apr_evaluate: run the technique itself."""

    @hookimpl(trylast=True)
    def apr_transform(self, technique, inputs, params, context):
        return technique.transform(inputs, params, context)

    @hookimpl(trylast=True)
    def apr_evaluate(self, technique, model, params, context):
        return technique.evaluate(model, params, context)


def _names(env: str) -> set[str] | None:
    raw = os.environ.get(env)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


class Registry:
    """Techniques and kinds by name, with the distribution each came from."""

    def __init__(self, deny: set[str] | None = None) -> None:
        self.techniques: dict[tuple[str, str], Registered] = {}
        self.kinds: dict[str, tuple[Kind, str]] = {EVALUATE.name: (EVALUATE, "apr-core")}
        self.plugins: list[PluginInfo] = []
        self.deny = deny or set()

    def add(self, obj: Technique | Kind, plugin: str, dist: str, version: str) -> None:
        if isinstance(obj, Kind):
            prior = self.kinds.get(obj.name)
            if prior is not None:
                raise PluginError(f"plugin {plugin} declares command kind {obj.name!r}, which {prior[1]} "
                                  f"already declares; a kind is declared once, by its family's plugin")
            self.kinds[obj.name] = (obj, plugin)
            return
        if not isinstance(obj, Technique):
            raise PluginError(f"plugin {plugin} registered {obj!r}: expected a Technique "
                              f"(TransformTechnique, EvaluateTechnique ...) or a Kind")
        if not obj.name or not obj.kind:
            raise PluginError(f"plugin {plugin} registered a technique without a name or kind: {obj!r}")
        key = (obj.kind, obj.name)
        if obj.name in self.deny or f"{obj.kind}/{obj.name}" in self.deny:
            return
        if key in self.techniques:
            first = self.techniques[key]
            raise PluginError(f"{obj.kind} technique {obj.name!r} is registered twice: by "
                              f"{first.distribution} ({first.plugin}) and {dist} ({plugin})")
        self.techniques[key] = Registered(obj, plugin, dist, version)

    def of_kind(self, kind: str) -> dict[str, Registered]:
        return {name: r for (k, name), r in sorted(self.techniques.items()) if k == kind}

    def kind(self, name: str) -> Kind:
        found = self.kinds.get(name)
        if found is None:
            raise AprError(f"no installed plugin provides the {name!r} command family")
        return found[0]

    def commands(self) -> dict[str, Kind]:
        """Command name -> kind, for every kind with at least one installed technique."""
        used = {k for k, _ in self.techniques}
        return {kind.command_name: kind for kind, _ in self.kinds.values() if kind.name in used}

    def get(self, kind: str, name: str) -> Technique:
        found = self.techniques.get((kind, name))
        if found is None:
            known = ", ".join(self.of_kind(kind)) or "none installed"
            raise AprError(f"unknown {kind} technique {name!r} (available: {known})")
        return found.technique


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown)", ""
    return dist.metadata["Name"], dist.version


def build(extra_plugins: Iterable[tuple[str, Any]] = (),
          distribution: str | None = None) -> tuple[pluggy.PluginManager, Registry]:
    """Load the entry-point plugins (honouring the allow/deny lists) and fill a registry.

    :param extra_plugins: (name, object) pairs registered in addition, as if
        from a distribution called ``(local)``; tests use this.
    :param distribution: load only entry points of this distribution (the
        generated docs describe apr's own plugins, whatever else is installed).
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(_CoreRunner(), name="apr-core-runner")
    allow, deny = _names(ENV_ALLOW), _names(ENV_DENY) or set()
    registry = Registry(deny)
    origin: dict[str, tuple[str, str]] = {}
    seen_eps: dict[str, str] = {}
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if (allow is not None and ep.name not in allow) or ep.name in deny:
            continue
        dist, version = _dist_of(ep)
        if distribution is not None and dist != distribution:
            continue
        if ep.name in seen_eps:
            if seen_eps[ep.name] == ep.value:
                continue  # the same distribution seen twice on sys.path
            raise PluginError(f"two plugins are named {ep.name!r}: {seen_eps[ep.name]} and {ep.value}")
        seen_eps[ep.name] = ep.value
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {ep.name} ({ep.value}) from {dist} failed to import: {exc}") from exc
        pm.register(plugin, name=ep.name)
        origin[ep.name] = (dist, version)
        registry.plugins.append(PluginInfo(ep.name, ep.value, dist, version))
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
        origin[name] = ("(local)", "")
        registry.plugins.append(PluginInfo(name, repr(plugin), "(local)", ""))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin} implements an unknown hook: {exc}") from exc
    for impl in pm.hook.apr_register_techniques.get_hookimpls():
        dist, version = origin.get(impl.plugin_name, ("(local)", ""))
        impl.function(register=lambda obj, _p=impl.plugin_name, _d=dist, _v=version: registry.add(obj, _p, _d, _v))
    return pm, registry


_CACHE: tuple[pluggy.PluginManager, Registry] | None = None


def manager() -> tuple[pluggy.PluginManager, Registry]:
    """The process-wide plugin manager and registry (built on first use)."""
    global _CACHE
    if _CACHE is None:
        _CACHE = build()
    return _CACHE


def use(built: tuple[pluggy.PluginManager, Registry] | None) -> None:
    """Replace the process-wide manager (None: rebuild from entry points on next use)."""
    global _CACHE
    _CACHE = built
