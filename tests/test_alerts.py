"""contrib/prometheus-alerts.yml: valid, unit-tested, and about metrics that exist.

promtool (Debian's prometheus package) checks the rules and runs their unit
tests, contrib/prometheus-alerts.test.yml; these tests skip without it, unless
$PARTYSENSE_REQUIRE_PROMTOOL is set (.ci/run installs it and sets it). Every
metric, label and label value an alert's expression names is looked for in a
running daemon's /metrics, so a renamed metric cannot leave an alert that
never fires; every alert has its runbook paragraph in docs/operations.md, and
a unit test where it fires and one where it stays quiet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.daemon import Daemon, wait_for
from tests.test_metrics import Samples, scrape

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus-alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus-alerts.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

# A metric of ours (or of prometheus_client's process collector) in an
# expression, with its label matchers if it has any.
SELECTOR = re.compile(r"\b((?:partysense|process|python)_[a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("PARTYSENSE_REQUIRE_PROMTOOL"):
            pytest.fail("the alert tests need promtool (apt-get install prometheus)")
        pytest.skip("no promtool: apt-get install prometheus")
    return path


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text("utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each metric ``expr`` selects, with its matchers (label, operator, value)."""
    return [(name, MATCHER.findall(braces or "")) for name, braces in SELECTOR.findall(expr)]


@pytest.mark.logic
def test_selectors_are_read_from_an_expression() -> None:
    expr = ('sum by (instance) (rate(partysense_bad_inputs_total{kind!~"a|b", job="x"}[5m]))'
            ' > 1 unless on (instance) partysense_listener_up == 0')
    assert selectors(expr) == [
        ("partysense_bad_inputs_total", [("kind", "!~", "a|b"), ("job", "=", "x")]),
        ("partysense_listener_up", []),
    ]


@pytest.mark.daemon
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.daemon
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    # Run from contrib/: the test file names its rules relative to itself.
    result = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULES.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.logic
def test_every_alert_fires_in_a_unit_test_and_stays_quiet_in_another() -> None:
    cases = [case for group in yaml.safe_load(RULE_TESTS.read_text("utf-8"))["tests"]
             for case in group["alert_rule_test"]]
    for name in {rule["alert"] for rule in alert_rules()}:
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == name]
        assert any(expected), f"no unit test in {RULE_TESTS.name} where {name} fires"
        assert not all(expected), f"no unit test in {RULE_TESTS.name} where {name} is quiet"


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.logic
def test_every_alert_has_a_runbook_paragraph_in_operations() -> None:
    sections: dict[str, str] = {}
    anchor = None
    fenced = False
    for line in OPERATIONS.read_text("utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("#") and not fenced:
            anchor = github_anchor(line.lstrip("#"))
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    for rule in alert_rules():
        runbook = rule["annotations"]["runbook"]
        page, _, fragment = runbook.partition("#")
        assert page == "docs/operations.md", runbook
        assert fragment == github_anchor(rule["alert"]), runbook
        assert fragment in sections, f"docs/operations.md has no heading {rule['alert']}"
        # What it means, what to look at, what to do: a paragraph, not a stub.
        assert len(sections[fragment].split()) >= 40, f"the runbook of {rule['alert']} is a stub"


def label_values(samples: Samples, metric: str, label: str) -> set[str]:
    return {dict(labels)[label] for name, labels in samples
            if name == metric and label in dict(labels)}


@pytest.mark.daemon
def test_every_metric_an_alert_uses_is_in_the_daemons_metrics(daemon: Daemon) -> None:
    # The queue usage appears once the poller has asked PostgreSQL.
    samples = wait_for(lambda: (s := scrape(daemon)) and any(
        name == "partysense_notification_queue_usage" for name, _ in s) and s,
        30, "the notification queue usage in /metrics")
    exported = {name for name, _ in samples}
    used = 0
    for rule in alert_rules():
        for metric, matchers in selectors(rule["expr"]):
            used += 1
            assert metric in exported, f"{rule['alert']} uses {metric}, not in /metrics"
            for label, op, value in matchers:
                values = label_values(samples, metric, label)
                assert values, f"{rule['alert']}: {metric} has no label {label}"
                named = value.split("|") if op in ("=~", "!~") else [value]
                for one in named:
                    assert re.fullmatch(r"[a-zA-Z0-9_]+", one), (
                        f"{rule['alert']}: only plain alternatives are checked, not {value!r}")
                    assert one in values, (
                        f"{rule['alert']}: {metric}{{{label}={one!r}}} is not in /metrics "
                        f"(it has {sorted(values)})")
    assert used >= len(alert_rules())
