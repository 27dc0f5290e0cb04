"""Named registries: one per kind of thing (optimizers, workloads, experiments)."""

from __future__ import annotations

from typing import Generic, TypeVar

Item = TypeVar("Item")


class Registry(dict[str, Item], Generic[Item]):
    """A mapping from names to items; an unknown name is a ValueError listing the valid ones."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, item: Item) -> Item:
        """Register ``item`` under ``name``; a name can be registered once."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = item
        return item

    def lookup(self, name: str) -> Item:
        """The item registered under ``name``."""
        try:
            return self[name]
        except (KeyError, TypeError):
            valid = ", ".join(sorted(self))
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {valid}") from None
