"""Latent codecs and text encoders built from how a config or a checkpoint names them.

Recipes choose them like every other pluggable part, by ``class_path`` / ``init_args`` or a class
name that jsonargparse resolves among the imported subclasses; LightningCLI then records that spec in
the data module's saved hyper-parameters. Code that rebuilds a run's codec outside LightningCLI
(``cf-gen`` from a checkpoint, ``cf-data`` from flags) goes through :func:`build_component`, which
reads the same specs, plus the short ``name`` each class carries (``pixel``, ``wan``, ``hash``,
``umt5``), the form shard metadata and older checkpoints record.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def subclasses(base: type[T]) -> list[type[T]]:
    """Every concrete subclass of ``base`` imported so far, depth first, without the wrappers
    jsonargparse makes for ``lazy_instance`` defaults (they are not classes a config names)."""
    found = []
    for cls in base.__subclasses__():
        found.append(cls)
        found.extend(subclasses(cls))
    return [cls for cls in found
            if not getattr(cls, "__abstractmethods__", None) and not _made_by_jsonargparse(cls)]


def component_spec(component: Any) -> dict[str, Any]:
    """The ``class_path``/``init_args`` spec that rebuilds ``component`` (a codec or text encoder): its
    constructor arguments taken from ``describe()``, the record shard metadata keeps too."""
    cls = next(c for c in type(component).__mro__ if not _made_by_jsonargparse(c))
    accepted = inspect.signature(cls).parameters
    init_args = {key: value for key, value in component.describe().items() if key in accepted}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _made_by_jsonargparse(cls: type) -> bool:
    return any(parent.__module__.split(".")[0] == "jsonargparse" for parent in cls.__mro__)


def resolve_class(base: type[T], name: str) -> type[T]:
    """The subclass of ``base`` called ``name``: an import path, a class name or its short ``name``."""
    if "." in name:
        module, _, attribute = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            raise ValueError(f"cannot import {base.__name__} class {name!r}") from None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ValueError(f"{name!r} is not a {base.__name__} subclass")
        return cls
    known = subclasses(base)
    for cls in known:
        if name in (cls.__name__, getattr(cls, "name", None)):
            return cls
    listed = ", ".join(sorted(f"{cls.__name__} ({cls.name})" if getattr(cls, "name", "") else cls.__name__
                              for cls in known))
    raise ValueError(f"unknown {base.__name__} {name!r}; choose one of: {listed}")


def build_component(base: type[T], spec: str | Mapping[str, Any] | T, **options: Any) -> T:
    """An instance of a ``base`` subclass from ``spec``: ``{"class_path": ..., "init_args": {...}}``, a
    class path or name, a short ``name`` (``options`` are its constructor arguments), or an instance."""
    if isinstance(spec, base):
        if options:
            raise ValueError(f"options {sorted(options)} given with an already built {type(spec).__name__}")
        return spec
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"class_path", "init_args"})
        if "class_path" not in spec or unknown:
            raise ValueError(f"a {base.__name__} spec needs 'class_path' and optionally 'init_args', "
                             f"got keys {sorted(spec)}")
        return resolve_class(base, spec["class_path"])(**{**(spec.get("init_args") or {}), **options})
    if not isinstance(spec, str):
        raise TypeError(f"a {base.__name__} is named by a string or a class_path mapping, got {spec!r}")
    return resolve_class(base, spec)(**options)
