"""The HAProxy config the scale-out tests run is contrib/'s, line for line.

harness/balancer.py replaces only the ``bind`` line (TLS on :443 becomes an
inherited plain-HTTP socket) and the ``server`` lines (the test's daemons),
and adds a stats socket; tests/test_scaleout.py then runs HAProxy on it.
"""

from __future__ import annotations

import pytest

from harness.balancer import SHIPPED_CONFIG, derive

pytestmark = pytest.mark.logic


def test_only_the_bind_and_server_lines_change() -> None:
    shipped = SHIPPED_CONFIG.read_text("utf-8").splitlines()
    derived = derive("\n".join(shipped), [("live1", 4001), ("live2", 4002)],
                     "/run/x/stats.sock", 7).splitlines()

    assert [line for line in derived if line.strip().startswith("bind")] == ["    bind fd@7"]
    servers = [line.strip() for line in derived if line.strip().startswith("server")]
    template = next(line.split(None, 3)[3:] for line in shipped
                    if line.strip().startswith("server "))
    assert servers == [" ".join(["server", name, f"127.0.0.1:{port}", *template])
                       for name, port in (("live1", 4001), ("live2", 4002))]
    assert "    stats socket /run/x/stats.sock mode 600 level admin" in derived

    def kept(line: str) -> bool:
        words = line.strip().lstrip("#").split()
        return words[:1] not in (["bind"], ["server"])
    added = {"    stats socket /run/x/stats.sock mode 600 level admin"}
    assert [line for line in derived if line not in added and kept(line)] == \
        [line for line in shipped if kept(line)]


def test_a_config_without_the_lines_it_replaces_is_refused() -> None:
    with pytest.raises(ValueError, match="bind"):
        derive("global\ndefaults\n    mode http\n", [("live1", 1)], "/s", 3)
