"""The connect storm's figures as Markdown (bench/storm.py)."""

from __future__ import annotations

import math
import statistics
from typing import Any


def _s(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f} s"


ROWS: list[tuple[str, Any]] = [
    ("clients connected / failed / dropped",
     lambda r: f"{r['connected']} / {r['failed']} / {r['dropped']}"),
    ("ready: seed (first frame) + v2 (snapshot)",
     lambda r: f"{r['ready_seed']} + {r['ready_v2']}"),
    ("every connection open after", lambda r: _s(r["all_open_s"])),
    ("**settled** (every client ready) after", lambda r: f"**{_s(r['settle_s'])}**"),
    ("  last seed / last v2 ready", lambda r: f"{_s(r['seed_settle_s'])} / "
                                              f"{_s(r['v2_settle_s'])}"),
    ("  v2 snapshot p50 / p99", lambda r: f"{_s(r['v2_p50_s'])} / {_s(r['v2_p99_s'])}"),
    ("  v2 from handshake to snapshot p50 / p99",
     lambda r: f"{_s(r['v2_wait_p50_s'])} / {_s(r['v2_wait_p99_s'])}"),
    ("daemon CPU during the storm (less the ticker's frames)",
     lambda r: f"{r['daemon_cpu_s']:.2f} s ({r['daemon_cpu_net_s']:.2f} s), "
               f"{r['daemon_cores']:.2f} cores"),
    ("daemon CPU per connect + subscribe", lambda r: f"{r['cpu_per_client_us']:.0f} µs"),
    ("**connects per daemon CPU-second**", lambda r: f"**{r['connects_per_cpu_s']:.0f}**"),
    ("  the same, nothing subtracted", lambda r: f"{r['connects_per_cpu_s_raw']:.0f}"),
    ("ticker: votes / frames during the storm",
     lambda r: f"{r['votes_during_storm']} / {r['vote_frames_during_storm']}"),
    ("  daemon CPU per frame (all connected) / idle",
     lambda r: f"{r['cpu_per_frame_us']:.1f} µs / {r['idle_cpu_per_s'] * 1e3:.0f} ms/s"),
    ("daemon statements during the storm",
     lambda r: "n/a" if r["statements"] is None else str(r["statements"]["all"])),
    ("  snapshots / change-log reads / event lookups / other",
     lambda r: "n/a" if r["statements"] is None else
     "{snapshots} / {change-log reads} / {event lookups} / {other}".format(**r["statements"])),
    ("daemon RSS before -> settled", lambda r: f"{r['rss_before_mb']:.0f} -> "
                                               f"{r['rss_settled_mb']:.0f} MB"),
    ("daemon RSS per client", lambda r: f"{r['rss_per_client_kb']:.1f} KB"),
    ("load generator CPU during the storm", lambda r: f"{r['loadgen_cpu_s']:.2f} s"),
    ("box load average (1 min, at the end)", lambda r: f"{r['load_average']:.1f}"),
]


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| | " + " | ".join(f"{r['tree']}" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for label, render in ROWS:
        cells = []
        for result in results:
            try:
                cells.append(str(render(result)))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def medians(results: list[dict[str, Any]]) -> str:
    """Per tree: the median connects per CPU-second and settle time over its rounds."""
    lines = []
    trees = list(dict.fromkeys(r["tree"] for r in results))
    for tree in trees:
        mine = [r for r in results if r["tree"] == tree]
        rate = statistics.median(r["connects_per_cpu_s"] for r in mine)
        settle = statistics.median(r["settle_s"] for r in mine)
        lines.append(f"- {tree}: {len(mine)} run(s), median {rate:.0f} connects per "
                     f"daemon CPU-second, settled in {settle:.2f} s")
    if len(trees) > 1:
        first = statistics.median(r["connects_per_cpu_s"] for r in results
                                  if r["tree"] == trees[0])
        last = statistics.median(r["connects_per_cpu_s"] for r in results
                                 if r["tree"] == trees[-1])
        lines.append(f"- {trees[-1]} / {trees[0]}: {last / first:.2f}× the connects per "
                     "daemon CPU-second")
    return "\n".join(lines) + "\n"
