"""Every command in README.md and docs/*.md runs from a fresh clone.

Commands once named folders of one machine (``--tree /work/before10``) and a
script that was never committed (``/work/bench-ab.sh``): they ran there and
nowhere else. These tests read the documents as a newcomer would: no
absolute path of a machine, every script or module a command runs is in the
repository (or, for a module of somebody else's, installed), and so is every
file of the repository they name (a module moved, its docs not).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.logic

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The benchmarks' usage lines are commands too (bench/storm.py's docstring had one).
BENCH_SOURCES = sorted((ROOT / "bench").glob("*.py")) + [ROOT / "bench" / "before_after.sh"]
# Our own top-level packages: a module of theirs must be a file here.
OURS = ("bench", "harness", "tests", "partysense")

# A home, a scratch folder or a checkout of one machine. Not /var/tmp/... (a
# default the daemon computes) nor a path under the checkout.
MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:work|root|home|tmp)/")
# ``bash bench/x.sh``, ``./x.sh``, ``/somewhere/x.sh``: any path to a shell script.
SHELL_SCRIPT = re.compile(r"(?<![\w/.$-])((?:/|\.{1,2}/)?[\w.-]+(?:/[\w.-]+)*\.sh)\b")
# ``python -m bench.x``, ``python3 -m pytest``, ``.venv/bin/python -m ...``.
MODULE = re.compile(r"\bpython[\d.]*\s+-m\s+([A-Za-z_][\w.]*)")
# ``python bench/x.py``: a script in a folder of the repository.
PYTHON_SCRIPT = re.compile(r"\bpython[\d.]*\s+((?:\./)?[\w-]+/[\w./-]+\.py)\b")
# A file or folder of the repository named as a path: ``bench/storm.py``,
# ``contrib/partysense-live.service``, ``tests/test_frames.py::test_...``.
REPOSITORY_PATH = re.compile(
    r"(?<![\w/.-])((?:partysense|tests|bench|harness|contrib|sql|docs|\.ci)/[\w./@-]*)")


def lines(documents: list[Path] = DOCUMENTS) -> Iterator[tuple[str, int, str]]:
    for document in documents:
        for number, line in enumerate(document.read_text("utf-8").splitlines(), 1):
            yield document.relative_to(ROOT).as_posix(), number, line


def module_exists(name: str) -> bool:
    """``name`` is one of our modules with a file in the checkout, or is installed."""
    if name.split(".")[0] in OURS:
        path = ROOT.joinpath(*name.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    return importlib.util.find_spec(name.split(".")[0]) is not None


def test_no_document_names_a_folder_of_one_machine() -> None:
    found = [f"{name}:{number}: {line.strip()}"
             for name, number, line in lines(DOCUMENTS + BENCH_SOURCES)
             if MACHINE_PATH.search(line)]
    assert not found, "absolute paths of one machine (use paths relative to the checkout):\n" \
        + "\n".join(found)


def test_every_script_a_document_names_is_in_the_repository() -> None:
    missing = [f"{name}:{number}: {script}" for name, number, line in lines()
               for script in SHELL_SCRIPT.findall(line) + PYTHON_SCRIPT.findall(line)
               if not (ROOT / script).is_file()]
    assert not missing, "scripts the documents run that are not in the repository:\n" \
        + "\n".join(missing)


def test_every_repository_path_a_document_names_exists() -> None:
    missing = [f"{name}:{number}: {path}" for name, number, line in lines()
               for path in REPOSITORY_PATH.findall(line)
               if not (ROOT / path.rstrip(".")).exists()]
    assert not missing, "paths the documents name that are not in the repository:\n" \
        + "\n".join(missing)


TEST_NAMED = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def test_every_test_a_document_names_exists_in_its_file() -> None:
    """docs/security.md names the test that shows each threat: split or renamed, the
    reference must follow it."""
    missing = [f"{name}:{number}: {path}::{test}" for name, number, line in lines()
               for path, test in TEST_NAMED.findall(line)
               if not (ROOT / path).is_file()
               or not re.search(rf"def {test}\b", (ROOT / path).read_text("utf-8"))]
    assert not missing, "tests the documents name that are not where they say:\n" \
        + "\n".join(missing)


def test_every_module_a_document_runs_exists() -> None:
    missing = [f"{name}:{number}: python -m {module}" for name, number, line in lines()
               for module in MODULE.findall(line) if not module_exists(module)]
    assert not missing, "modules the documents run that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize(("line", "caught"), [
    ("python -m bench.storm --tree /work/before10 --tree .", True),
    ("see `/root/.cache/x`", True),
    ("--data-dir `/var/tmp/partysense-live-UID/pgdata`", False),
    ("--tree ../before", False),
])
def test_machine_paths_are_told_from_others(line: str, caught: bool) -> None:
    assert bool(MACHINE_PATH.search(line)) is caught


def test_scripts_and_modules_are_found_in_commands() -> None:
    line = "BEFORE=../before bash bench/before_after.sh; python -m bench.x; (`/w/bench-ab.sh`)"
    assert SHELL_SCRIPT.findall(line) == ["bench/before_after.sh", "/w/bench-ab.sh"]
    assert SHELL_SCRIPT.findall("$OUT/x.sh ./run.sh") == ["./run.sh"]
    assert MODULE.findall(line) == ["bench.x"] and not module_exists("bench.x")
    assert module_exists("bench.storm") and module_exists("pytest")
    assert REPOSITORY_PATH.findall("`tests/test_frames.py::test_x`, see bench/storm.py. "
                                   "the/tests/x") == ["tests/test_frames.py", "bench/storm.py."]
    assert PYTHON_SCRIPT.findall("python3 bench/x.py --n 1; python manage.py") == ["bench/x.py"]


def test_the_readme_layout_names_every_module_of_the_package() -> None:
    # The README's module list missed ten modules once, and every WAL module
    # later: a module added is named where a newcomer looks for its room.
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    package = ROOT / "partysense"
    unnamed = [
        str(module.relative_to(package)) for module in sorted(package.rglob("*.py"))
        if module.name != "__init__.py"
        and f"`{module.name}`" not in layout
        and not any(f"{tail}`" in layout for tail in _tails(module.relative_to(package)))]
    assert not unnamed, f"README.md's Layout does not name: {', '.join(unnamed)}"


def _tails(path: Path) -> Iterator[str]:
    """``a/b/c.py``, ``b/c.py``: how the README may name a module below a folder."""
    parts = path.parts
    for start in range(len(parts) - 1):
        yield "/".join(parts[start:])
