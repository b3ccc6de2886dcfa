"""Name -> policy class registry, shared by Python callers, YAML recipes and third-party plugins.

jsonargparse (behind LightningCLI) resolves a bare name in ``class_path`` by matching the
``__name__`` of imported subclasses. To let recipes say ``memory: slow_fast`` as well as
``memory: SlowFast``, registering a short name creates a thin alias subclass with that name in the
policy's own module. The alias behaves exactly like its parent, so YAML, the command line and
Python all share one namespace without any custom YAML loader.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

from memory_policies.base import MemoryPolicy

ENTRY_POINT_GROUP = "cf_lightning.memory_policies"
_REGISTRY: dict[str, type[MemoryPolicy]] = {}

P = TypeVar("P", bound=type[MemoryPolicy])


def register_policy(*aliases: str) -> Callable[[P], P]:
    """Class decorator: register a policy under its class name and any short ``aliases``.

    >>> @register_policy("every_other")
    ... class EveryOther(MemoryPolicy): ...
    """

    def decorate(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, MemoryPolicy)):
            raise TypeError(f"register_policy expects a MemoryPolicy subclass, got {cls!r}")
        _add(cls.__name__, cls)
        for alias in aliases:
            _add(alias, _alias_class(alias, cls))
        return cls

    return decorate


def _add(name: str, cls: type[MemoryPolicy]) -> None:
    existing = _REGISTRY.get(name)
    if existing is not None and _canonical(existing) is not _canonical(cls):
        raise ValueError(
            f"memory policy name {name!r} is already registered to "
            f"{existing.__module__}.{existing.__qualname__}"
        )
    _REGISTRY[name] = cls


def _alias_class(alias: str, cls: type[MemoryPolicy]) -> type[MemoryPolicy]:
    """A same-behaviour subclass named ``alias``, importable from ``cls``'s module."""
    if not alias.isidentifier():
        raise ValueError(f"policy alias {alias!r} must be a Python identifier")
    module = sys.modules[cls.__module__]
    current = getattr(module, alias, None)
    if isinstance(current, type) and getattr(current, "_alias_of", None) is cls:
        return current
    if current is not None:
        raise ValueError(f"cannot alias {alias!r}: {cls.__module__}.{alias} already exists")
    alias_cls = type(alias, (cls,), {"__module__": cls.__module__, "__qualname__": alias, "_alias_of": cls,
                                     "__doc__": f"Short name for :class:`{cls.__qualname__}`."})
    setattr(module, alias, alias_cls)
    return alias_cls


def _canonical(cls: type[MemoryPolicy]) -> type[MemoryPolicy]:
    return getattr(cls, "_alias_of", cls)


def canonical_name(policy: MemoryPolicy | type[MemoryPolicy]) -> str:
    """The class name a policy was registered under, looking through short-name aliases."""
    cls = policy if isinstance(policy, type) else type(policy)
    return _canonical(cls).__name__


def available_policies() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def get_policy_class(name: str) -> type[MemoryPolicy]:
    """Look a policy up by class name or alias; unknown names list what is available."""
    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown memory policy {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def build_policy(name: str, **init_args: object) -> MemoryPolicy:
    """Instantiate a registered policy; a wrong argument names the policy and its accepted arguments."""
    cls = get_policy_class(name)
    try:
        return cls(**init_args)
    except TypeError as error:
        raise TypeError(f"bad init_args for memory policy {name!r}: {error}") from None


_loaded_plugins: set[str] = set()


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Import third-party policies advertised under the entry-point group, so their names resolve.

    Importing a plugin runs its ``@register_policy`` decorators; an entry point may also point
    straight at an undecorated class, which is then registered under its class name.
    """
    loaded = []
    for entry in entry_points(group=group):
        key = f"{entry.name}={entry.value}"
        if key in _loaded_plugins:
            continue
        target = entry.load()
        if isinstance(target, type) and issubclass(target, MemoryPolicy):
            if target.__name__ not in _REGISTRY:
                _add(target.__name__, target)
            if entry.name != target.__name__ and entry.name not in _REGISTRY:
                _add(entry.name, _alias_class(entry.name, target))
        _loaded_plugins.add(key)
        loaded.append(entry.name)
    return loaded
