#!/usr/bin/env bash
# Two keel builds side by side on this machine, in one run: a 3-node cluster
# of build A, then of build B, alternating ROUNDS times on fresh data
# directories, the same closed-loop work against each (`keel bench` of
# build B: N clients, each sending one 1 KiB record and waiting for its
# acknowledgement after fdatasync on a quorum). For a regression check of
# a change against the commit before it.
#
#   git worktree add /tmp/keel-a <commit> &&
#     CARGO_TARGET_DIR=/tmp/keel-a-target cargo build --release -p keel --manifest-path /tmp/keel-a/Cargo.toml
#   A=/tmp/keel-a-target/release/keel benchmarks/keel-ab.sh
#   ROUNDS=5 DURATION=5s CLIENTS="1 8 64" A=... B=... benchmarks/keel-ab.sh
#
# B defaults to this checkout's release build. Data goes under target/
# unless BENCH_DIR says otherwise. Ports 27070+100*i (client, peer,
# metrics), as benchmarks/keel-vs-etcd.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
SIZE=${SIZE:-1024}
CLIENTS=${CLIENTS:-"1 64"}
BENCH_ARGS=${BENCH_ARGS:-}
: "${A:?set A to the keel binary of the build to compare against (see the top of this script)}"
if [ -z "${B:-}" ]; then
    echo "== building keel (release)"
    cargo build --release -q -p keel
    B=$PWD/target/release/keel
fi
for bin in "$A" "$B"; do
    [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "python3 is needed for the summary table" >&2; exit 1; }

BASE=${BENCH_DIR:-$PWD/target}
mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/keel-ab.XXXXXX")
RESULTS=$WORK/results.jsonl
# shellcheck source=lib/cluster.sh
. benchmarks/lib/cluster.sh # (the script runs from the repository root)
trap cleanup EXIT
EPS=$KEEL3_EPS

bench() { # label clients round
    local out
    out=$("$B" bench --endpoints "$EPS" --clients "$2" --size "$SIZE" \
        --duration "$DURATION" --warmup "$WARMUP" $BENCH_ARGS --output json)
    echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["build"]=sys.argv[1]; d["round"]=int(sys.argv[2]); print(json.dumps(d))' "$1" "$3" >>"$RESULTS"
    echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("   %s %3d clients: %8.0f records/s  p50 %6.2f ms  p99 %6.2f ms  errors %d" % (sys.argv[1], d["clients"], d["records_per_s"], d["p50_ms"], d["p99_ms"], d["errors"]))' "$1"
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), data on $(df -T "$BASE" | awk 'NR==2 {print $1", "$2}')"
echo "== A: $A ($("$A" --version 2>/dev/null || echo '?'))"
echo "== B: $B ($("$B" --version 2>/dev/null || echo '?'))"
echo "== $ROUNDS rounds, $DURATION per point after $WARMUP warm-up, ${SIZE} B records, clients: $CLIENTS${BENCH_ARGS:+, bench flags: $BENCH_ARGS}"
for round in $(seq "$ROUNDS"); do
    # Alternate which build goes first, so neither always gets the
    # quieter (or the warmer) half of a round.
    order="A B"
    [ $((round % 2)) -eq 0 ] && order="B A"
    for label in $order; do
        bin=$A
        [ "$label" = B ] && bin=$B
        echo "== round $round: $label"
        rm -rf "$WORK/data"
        start_keel3 "$bin" "$label" "$B"
        for c in $CLIENTS; do bench "$label" "$c" "$round"; done
        stop_all
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def vals(b, c, key):
    return [r[key] for r in rows if r["build"] == b and r["clients"] == c]
def med(b, c, key):
    return statistics.median(vals(b, c, key))
print()
print("medians of %d rounds (durable: acknowledged after fdatasync on a quorum)" % max(r["round"] for r in rows))
print("| clients | A records/s | A p50 ms | A p99 ms | B records/s | B p50 ms | B p99 ms | throughput B/A | p50 A/B | B/A by round |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--|")
for c in sorted({r["clients"] for r in rows}):
    a, b = med("A", c, "records_per_s"), med("B", c, "records_per_s")
    by_round = ", ".join("%.2f" % (y / x) for x, y in zip(vals("A", c, "records_per_s"), vals("B", c, "records_per_s")))
    print("| %d | %.0f | %.2f | %.2f | %.0f | %.2f | %.2f | %.2fx | %.2fx | %s |" % (
        c, a, med("A", c, "p50_ms"), med("A", c, "p99_ms"), b, med("B", c, "p50_ms"),
        med("B", c, "p99_ms"), b / a, med("A", c, "p50_ms") / med("B", c, "p50_ms"), by_round))
PY
echo "raw results: $RESULTS"
