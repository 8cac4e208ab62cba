"""The Lua scripts in `lua/`, loaded with named KEYS and ARGV.

Each file's header declares what it takes (`-- KEYS: a, b`, `-- ARGV: x, y`) and which shared preludes it
uses (`-- USES: common, levels`); the loader binds every name to a Lua local, so a script reads `worker`
rather than `ARGV[9]`, and callers pass dicts checked against the declaration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from redis.commands.core import AsyncScript

LUA_DIR = Path(__file__).with_name("lua")
_HEADER = re.compile(r"^-- (KEYS|ARGV|USES): (.*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]  # the preludes' ARGV first, then the script's own
    source: str

    def keys_of(self, values: Mapping[str, str]) -> list[str]:
        _check(self.name, "KEYS", self.keys, values)
        return [values[k] for k in self.keys]

    def args_of(self, values: Mapping[str, Any]) -> list[Any]:
        _check(self.name, "ARGV", self.args, values)
        return [values[a] for a in self.args]


def _check(script: str, what: str, declared: tuple[str, ...], given: Mapping[str, Any]) -> None:
    if set(given) != set(declared):
        raise TypeError(f"{script}.lua {what}: expected {sorted(declared)}, got {sorted(given)}")


def _declared(text: str, what: str) -> tuple[str, ...]:
    found = [m.group(2) for m in _HEADER.finditer(text) if m.group(1) == what]
    return tuple(name.strip() for line in found for name in line.split(",") if name.strip())


@cache
def load(name: str) -> LuaScript:
    """A script with its preludes and its name bindings prepended (after its `#!lua` flags line)."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    shebang, _, body = text.partition("\n") if text.startswith("#!") else ("", "", text)
    preludes = [(LUA_DIR / f"{use}.lua").read_text() for use in _declared(text, "USES")]
    keys = _declared(text, "KEYS")
    args = tuple(a for prelude in preludes for a in _declared(prelude, "ARGV")) + _declared(text, "ARGV")
    binding = [f"local {k} = KEYS[{i}]" for i, k in enumerate(keys, 1)]
    binding += [f"local {a} = ARGV[{i}]" for i, a in enumerate(args, 1)]
    source = "\n".join([shebang, *binding, *preludes, body]).lstrip("\n") if not shebang else \
        "\n".join([shebang, *binding, *preludes, body])
    return LuaScript(name, keys, args, source)


class Scripts:
    """The scripts registered on one client (redis-py loads each by SHA on first use)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._registered: dict[str, AsyncScript] = {}
        self._loaded: set[str] = set()  # on every server (a cluster's pipelines do not load scripts themselves)

    async def run(self, name: str, keys: Mapping[str, str], args: Mapping[str, Any], client: Any = None) -> Any:
        """Run script `name`; with `client` (a pipeline) it is queued there instead."""
        script = load(name)
        registered = self._registered.get(name)
        if registered is None:
            registered = self._registered[name] = self._client.register_script(script.source)
        if client is not None and name not in self._loaded:
            await self._client.script_load(script.source)  # on a cluster: on every primary
            self._loaded.add(name)
        return await registered(keys=script.keys_of(keys), args=script.args_of(args), client=client)

    def forget(self) -> None:
        """A server lost its scripts (restarted): load them again before the next pipeline."""
        self._loaded.clear()
