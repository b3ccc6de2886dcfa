"""Components chosen by a short name in configs and CLIs (latent codecs, text encoders).

Memory policies have their own registry in ``memory_policies`` (pure torch, plus the jsonargparse
aliases that YAML needs); this one serves the data side, where a name from a config or shard
metadata must map to one class and a typo must list what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by name; :meth:`register` is a class decorator that also sets ``cls.name``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            taken = self.classes.get(name)
            if taken is not None and taken is not cls:
                raise ValueError(f"{self.kind} name {name!r} is already taken by {taken.__qualname__}")
            cls.name = name  # type: ignore[attr-defined]
            self.classes[name] = cls
            return cls

        return add

    def build(self, name: str, **options: Any) -> T:
        if name not in self.classes:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self.classes))}")
        return self.classes[name](**options)
