"""How long each database fault keeps clients waiting (docs/exactness.md).

    python -m bench.recovery                 # 5 runs of each fault
    python -m bench.recovery --runs 10 --faults killed,silent

Runs the scenarios of tests/test_faults.py, from harness/scenarios.py (a
real twistd, seed clients, a voter, a vote held open across the outage),
against an embedded PostgreSQL of its own, and reports, per fault, the time
from the fault to /healthz answering 200 again and to the frame of the vote
committed during the outage (the first change only the catch-up replay can
deliver). Every run also checks, as the tests do, that nothing was lost,
duplicated or reordered.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.faults import DedicatedPostgres, Recovery, SilentProxy, dedicated_postgres
from harness.scenarios import (
    Scene,
    backend_killed,
    backend_killed_and_locked_out,
    down_at_start,
    postgres_restarted,
    silent_connection,
)

Fault = Callable[[DedicatedPostgres, str, Path], Recovery]


def _in_scene(run: Callable[[Scene], Recovery]) -> Fault:
    def fault(server: DedicatedPostgres, dsn: str, workdir: Path) -> Recovery:
        scene = Scene(dsn, dsn, workdir)
        try:
            return run(scene)
        finally:
            scene.close()
    return fault


def _restarted(server: DedicatedPostgres, dsn: str, workdir: Path) -> Recovery:
    scene = Scene(dsn, dsn, workdir)
    try:
        return postgres_restarted(scene, server)
    finally:
        scene.close()


def _silent(server: DedicatedPostgres, dsn: str, workdir: Path) -> Recovery:
    proxy = SilentProxy(dsn)
    scene = Scene(proxy.dsn(dsn), dsn, workdir)
    try:
        return silent_connection(scene, proxy)
    finally:
        scene.close()
        proxy.close()


def _down_at_start(server: DedicatedPostgres, dsn: str, workdir: Path) -> Recovery:
    try:
        return down_at_start(server, dsn, workdir)
    finally:
        if not server.running:
            server.start()


FAULTS: dict[str, Fault] = {
    "killed": _in_scene(backend_killed),
    "locked-out": _in_scene(backend_killed_and_locked_out),
    "restarted": _restarted,
    "silent": _silent,
    "down-at-start": _down_at_start,
}


def summary(values: list[float | None]) -> str:
    seen = [v for v in values if v is not None]
    if not seen:
        return "-"
    return f"median {statistics.median(seen):.2f} s, max {max(seen):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, from: {', '.join(FAULTS)}")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.faults.split(",") if name.strip()]
    results: dict[str, list[Recovery]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="partysense-recovery-") as scratch, \
            dedicated_postgres(Path(scratch) / "pg") as server:
        for run in range(args.runs):
            for name in chosen:
                workdir = Path(scratch) / f"{name}-{run}"
                workdir.mkdir()
                result = FAULTS[name](server, server.database(f"r{run}_{name.replace('-', '_')}"),
                                      workdir)
                results[name].append(result)
                print(f"run {run + 1}: {result.line()}", flush=True)
    print()
    print(f"{'fault':14} {'/healthz 200 again':34} {'first change committed in the outage'}")
    for name, runs in results.items():
        print(f"{name:14} {summary([r.to_healthy for r in runs]):34} "
              f"{summary([r.to_first_replayed for r in runs])}")


if __name__ == "__main__":
    main()
