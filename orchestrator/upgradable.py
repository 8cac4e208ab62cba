"""Models that survive an upgrade: Ray restarts an actor with the arguments pickled when it was created, so
settings pickled by an older version must load in a newer one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def fill_defaults(model: type[BaseModel], state: dict[str, Any]) -> None:
    """Give the fields an older pickle lacks their defaults (a field without one was there all along)."""
    values = state.setdefault("__dict__", {})
    for name, field in model.model_fields.items():
        if name not in values and not field.is_required():
            values[name] = field.get_default(call_default_factory=True, validated_data=values)


class Upgradable(BaseModel):
    def __setstate__(self, state: dict[str, Any]) -> None:
        fill_defaults(type(self), state)
        super().__setstate__(state)
