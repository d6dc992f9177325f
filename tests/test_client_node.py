"""The JS client's pure functions (tests/js/*.test.mjs) under Node's own test runner.

So the README's test command runs them too. Without node they are skipped,
unless $PARTYSENSE_REQUIRE_NODE is set (.ci/run installs nodejs and sets it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).resolve().parent / "js"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        if os.environ.get("PARTYSENSE_REQUIRE_NODE"):
            pytest.fail("the JS client's tests need node (apt-get install nodejs)")
        pytest.skip("no node: apt-get install nodejs")
    return path


@pytest.mark.daemon  # it starts a process (node), as the daemon tests do
def test_the_js_client_pure_functions_pass_under_node() -> None:
    # The files by name: from Node 21 on, the arguments are glob patterns, not folders.
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, f"no *.test.mjs in {JS_TESTS}"
    run = subprocess.run([node(), "--test", *files], capture_output=True,
                         text=True, timeout=120, cwd=JS_TESTS.parent.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout and "# pass 0" not in run.stdout, run.stdout
