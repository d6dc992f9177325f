"""The canaries' one check: a third-party private name is there, in the shape
the adapter needs (partysense/adapters/). When an upgrade removes a name or
changes its shape, the canary fails with a message naming the library, the
name and the version installed, instead of the daemon breaking silently
(docs/architecture.md lists them and says why we need each).

The canaries, one file a library: tests/test_adapters_txpostgres.py,
tests/test_adapters_twisted.py, tests/test_adapters_twisted_web.py,
tests/test_adapters_autobahn.py.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any


def canary(library: str, name: str, ok: bool, shape: str) -> None:
    assert ok, (f"{library} {metadata.version(library)}: {name} is gone or changed shape "
                f"(expected {shape}); see docs/architecture.md")


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)
