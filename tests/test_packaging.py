"""A real install, as production does it: ``pip install .`` into a fresh virtualenv.

Proves the twistd dropin, the console script, the SQL and the page land in
the installed tree (a flat layout loses them silently), and documents why the
README's editable install says ``editable_mode=compat``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import daemon as harness_daemon
from harness.daemon import Daemon

CHECKOUT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.daemon, pytest.mark.slow]


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    """Run a command with a clean environment; fail with its output if it fails."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PARTYSENSE_DSN", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def copy_checkout(destination: Path) -> Path:
    """The working tree's tracked and new files (what git would commit), nothing built."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                 cwd=CHECKOUT)
    for name in filter(None, listed.split("\0")):
        source = CHECKOUT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def new_venv(path: Path) -> Path:
    """A virtualenv that sees no site-packages but its own."""
    run(sys.executable, "-m", "venv", path)
    config = (path / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout-copy"))


@pytest.fixture(scope="module")
def installed(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = new_venv(tmp_path_factory.mktemp("installed") / "venv")
    run(venv / "bin" / "pip", "install", "--quiet", source)
    yield venv


def outside(tmp_path: Path) -> Path:
    """A working directory away from the checkout, so nothing is imported from it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    return folder


def test_twistd_lists_the_plugin(installed: Path, tmp_path: Path) -> None:
    listing = run(installed / "bin" / "twistd", "--help", cwd=outside(tmp_path))
    assert "partysense-live" in listing
    options = run(installed / "bin" / "twistd", "partysense-live", "--help",
                  cwd=outside(tmp_path))
    assert "--dsn" in options and "--port" in options


def test_partysense_db_console_script(installed: Path, tmp_path: Path) -> None:
    usage = run(installed / "bin" / "partysense-db", "--help", cwd=outside(tmp_path))
    assert "install" in usage
    install_usage = run(installed / "bin" / "partysense-db", "install", "--help",
                        cwd=outside(tmp_path))
    assert "--dsn" in install_usage and "--demo-schema" in install_usage


INSPECT = """
import json, sys
from importlib import metadata, resources
import partysense, twisted
from partysense.db import sqlfiles
files = [str(f) for f in metadata.files("partysense-live")]
print(json.dumps({
    "files": files,
    "partysense": partysense.__file__,
    "twisted_dir": str(resources.files("twisted")),
    "install_sql": sqlfiles.read_sql("install.sql"),
    "demo_sql": sqlfiles.read_sql("demo_schema.sql"),
}))
"""


def test_installed_files(installed: Path, tmp_path: Path) -> None:
    found = json.loads(run(installed / "bin" / "python", "-c", INSPECT, cwd=outside(tmp_path)))
    files = set(found["files"])
    for wanted in ("partysense/sql/install.sql", "partysense/sql/demo_schema.sql",
                   "partysense/web/static/index.html", "partysense/web/admin/status.html",
                   "partysense/web/admin/status.js", "twisted/plugins/partysense_live.py",
                   "partysense/tap.py", "partysense/sql/uninstall.sql",
                   "partysense/djangoapp/templates/partysense_live/board.html",
                   "partysense/djangoapp/migrations/0001_install.py",
                   "partysense/djangoapp/templatetags/partysense_live.py",
                   "partysense/djangoapp/management/commands/partysense_install.py"):
        assert wanted in files, f"{wanted} is not in the installed package"
    # Twisted's own package must stay Twisted's: we ship no __init__.py there,
    # and no stale plugin cache.
    for unwanted in ("twisted/__init__.py", "twisted/plugins/__init__.py",
                     "twisted/plugins/dropin.cache"):
        assert unwanted not in files
    assert not any(name.startswith(("tests/", "bench/", "harness/", "sql/")) for name in files)
    # Imported from the virtualenv, not from the checkout...
    assert found["partysense"].startswith(str(installed))
    # ...and the SQL read from the installed package is the checkout's.
    assert found["install_sql"] == (CHECKOUT / "sql" / "install.sql").read_text("utf-8")
    assert found["demo_sql"] == (CHECKOUT / "sql" / "demo_schema.sql").read_text("utf-8")


def test_installed_daemon_serves(installed: Path, db_dsn: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed twistd runs the service, with the page from the wheel."""
    monkeypatch.setattr(harness_daemon, "twistd_command",
                        lambda: [str(installed / "bin" / "twistd")])
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PARTYSENSE_DSN")}
    with Daemon(db_dsn, outside(tmp_path), env=env) as daemon:
        with urllib.request.urlopen(daemon.url + "/", timeout=10) as response:
            assert response.headers["content-type"].startswith("text/html")
            assert b"<html" in response.read().lower()
        assert daemon.health() is not None


DJANGO_APP = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "partysense.djangoapp"],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
    ROOT_URLCONF="partysense.djangoapp.urls",
    PARTYSENSE_LIVE={"URL": "https://live.example", "MIGRATE_AFTER": None})
django.setup()
from django.contrib.auth.models import AnonymousUser
from django.db.migrations.loader import MigrationLoader
from django.template import Context, Template
from django.test import RequestFactory
request = RequestFactory().get("/")
request.user = AnonymousUser()
print(Template("{% load partysense_live %}{% live_board 3 %}").render(
    Context({"request": request})))
print(sorted(name for app, name in MigrationLoader(None).disk_migrations
             if app == "partysense_live"))
"""


def test_the_django_app_works_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """With Django beside it (the ``django`` extra), the app's tag, template and
    migration load from the installed package."""
    run(installed / "bin" / "pip", "install", "--quiet", "django>=4.2")
    shown = run(installed / "bin" / "python", "-c", DJANGO_APP, cwd=outside(tmp_path))
    assert 'class="partysense-live"' in shown and "log in" in shown
    migrations = sorted(path.stem for path in (CHECKOUT / "partysense" / "djangoapp"
                                               / "migrations").glob("0*.py"))
    assert migrations[0] == "0001_install" and str(migrations) in shown


def twistd_lists_plugin(venv: Path, cwd: Path) -> bool:
    return "partysense-live" in run(venv / "bin" / "twistd", "--help", cwd=cwd)


def test_editable_install_needs_compat_mode(source: Path, tmp_path: Path) -> None:
    """The pitfall the README works around: a plain ``pip install -e .`` hides the dropin."""
    venv = new_venv(tmp_path / "venv")
    pip = venv / "bin" / "pip"
    run(pip, "install", "--quiet", "twisted")  # enough for twistd --help to scan plugins
    cwd = outside(tmp_path)

    run(pip, "install", "--quiet", "--no-deps", "-e", source)
    assert not twistd_lists_plugin(venv, cwd), (
        "a plain editable install now shows the plugin: the README's compat advice "
        "may be obsolete")

    run(pip, "install", "--quiet", "--no-deps", "-e", source,
        "--config-settings", "editable_mode=compat")
    assert twistd_lists_plugin(venv, cwd)
