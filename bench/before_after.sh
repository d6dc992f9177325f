#!/usr/bin/env bash
# One sitting, before and after: the connect storm, the max scenario, --write-delay 0/5/20
# and SSE against WebSockets (docs/performance.md quotes its figures).
#
#   BEFORE=/path/to/old/checkout bash bench/before_after.sh
#   BEFORE=../before SCENARIOS="max s200" EXTRAS=0 bash bench/before_after.sh   # a redesign's check
#
# BEFORE is another checkout with its own .venv (python3 -m venv .venv && .venv/bin/pip
# install -e '.[test]' --config-settings editable_mode=compat); this checkout is "after".
# Results (JSON, text, storm.md) go to $OUT (default: bench-results/ here).
set -u
AFTER=$(cd "$(dirname "$0")/.." && pwd)
BEFORE=${BEFORE:?set BEFORE to the checkout to compare with}
OUT=${OUT:-$AFTER/bench-results}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-max}   # bench.run scenarios, before and after in turn
EXTRAS=${EXTRAS:-1}           # 0: leave out the --write-delay and SSE runs
mkdir -p "$OUT"
cd "$AFTER"
note() { echo "[$(date +%T)] $*"; }

note storm
.venv/bin/python -m bench.storm --tree "$BEFORE" --tree "$AFTER" --rounds "$RUNS" \
    --markdown "$OUT/storm.md" --json "$OUT/storm.json" > "$OUT/storm.txt" 2>&1
# Both sides measured by this checkout's bench (the same clients and votes); --tree runs
# the other checkout's twistd.
for i in $(seq 1 "$RUNS"); do
    for scenario in $SCENARIOS; do
        for side in before after; do
            tree=(--tree "$BEFORE"); [ "$side" = after ] && tree=()
            .venv/bin/python -m bench.run --scenario "$scenario" --duration 10 \
                --targets partysense "${tree[@]}" \
                --json "$OUT/$scenario-$side-$i.json" > "$OUT/$scenario-$side-$i.txt" 2>&1
            note "$scenario $side $i: exit $?"
        done
    done
done
[ "$EXTRAS" = 0 ] && { note done; exit 0; }
for i in 1 2; do
    for delay in 0 5 20; do
        .venv/bin/python -m bench.run --scenario max --rate 400 --duration 10 \
            --targets partysense --write-delay "$delay" \
            --json "$OUT/delay-$delay-$i.json" > "$OUT/delay-$delay-$i.txt" 2>&1
        note "write-delay $delay, run $i: exit $?"
    done
done
for i in 1 2; do
    .venv/bin/python -m bench.sse --clients 1000 --rate 100 --duration 20 \
        --json "$OUT/sse-$i.json" > "$OUT/sse-$i.txt" 2>&1
    note "sse $i: exit $?"
done
note done
