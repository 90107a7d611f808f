"""One registry per kind of thing (mixers, tasks, datasets), filled by a decorator."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def unknown_name_message(kind: str, name: object, names: list[str], choose: str = "choose one of") -> str:
    """One line for a name that is not one of ``names``: what was given, the closest valid name, all of them."""
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; {choose}: {', '.join(names)}"


class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists the valid names (one line, no quotes around it)."""


class Registry(Generic[T]):
    """Maps short names to classes or factories.

    A duplicate name is an error; an unknown name lists the valid ones with a "did you mean".
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        return unknown_name_message(self.kind, name, sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
