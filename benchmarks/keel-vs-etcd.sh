#!/usr/bin/env bash
# keel vs etcd on this machine, in one run: a 3-node etcd cluster and a
# 3-node keel cluster on loopback, the same closed-loop work against each
# (`keel bench`: N clients, each sending one 1 KiB record / put and waiting
# for its acknowledgement; both durable on a quorum: etcd fsyncs its WAL,
# keel acknowledges after fdatasync on a quorum), 1 and 64 clients.
# The systems alternate, ROUNDS times, each round on fresh data
# directories; the table shows each point's median and the ratios.
#
#   benchmarks/keel-vs-etcd.sh                # 3 rounds of 10 s points
#   ROUNDS=2 DURATION=5s benchmarks/keel-vs-etcd.sh
#   BENCH_ARGS="--threads 2 --conns 4" benchmarks/keel-vs-etcd.sh   # another load generator shape, for both
#
# Installs Debian's etcd-server and etcd-client (apt-get) if etcd is
# missing. Data goes under target/ (the repository's disk) unless
# BENCH_DIR says otherwise. Ports: etcd 23791-23793 (clients) and
# 23801-23803 (peers); keel 27070+100*i (client, peer, metrics).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
SIZE=${SIZE:-1024}
CLIENTS=${CLIENTS:-"1 64"}
# Extra `keel bench` flags, the same for both systems (e.g. --threads, --conns).
BENCH_ARGS=${BENCH_ARGS:-}

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    echo "== installing etcd-server and etcd-client (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
command -v python3 >/dev/null || { echo "python3 is needed for the summary table" >&2; exit 1; }

echo "== building keel (release)"
cargo build --release -q -p keel
KEEL=$PWD/target/release/keel

BASE=${BENCH_DIR:-$PWD/target}
mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/keel-vs-etcd.XXXXXX")
RESULTS=$WORK/results.jsonl
# shellcheck source=lib/cluster.sh
. benchmarks/lib/cluster.sh # (the script runs from the repository root)
trap cleanup EXIT

ETCD_EPS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
start_etcd() {
    local cluster=""
    for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:2380$i,"; done
    cluster=${cluster%,}
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$WORK/data/etcd$i" \
            --listen-client-urls "http://127.0.0.1:2379$i" \
            --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" \
            --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "keel-bench-$$" \
            --quota-backend-bytes 8589934592 \
            --log-level error >"$WORK/etcd$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "etcd did not become healthy; see $WORK/etcd*.log" >&2
    exit 1
}
etcd_leader() {
    # `endpoint status` (simple): endpoint, id, version, db size, is leader, ...
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint status 2>/dev/null |
        awk -F', ' '$5 == "true" { print $1 }' | sed 's#http://##' | head -1
}

KEEL_EPS=$KEEL3_EPS

bench() { # target endpoints clients round
    local out
    out=$("$KEEL" bench --target "$1" --endpoints "$2" --clients "$3" --size "$SIZE" \
        --duration "$DURATION" --warmup "$WARMUP" $BENCH_ARGS --output json)
    echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["round"]=int(sys.argv[1]); print(json.dumps(d))' "$4" >>"$RESULTS"
    echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("   %-4s %3d clients: %8.0f records/s  p50 %6.2f ms  p99 %6.2f ms  errors %d" % (d["target"], d["clients"], d["records_per_s"], d["p50_ms"], d["p99_ms"], d["errors"]))'
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), data on $(df -T "$BASE" | awk 'NR==2 {print $1", "$2}')"
echo "== $ROUNDS rounds, $DURATION per point after $WARMUP warm-up, ${SIZE} B records, clients: $CLIENTS${BENCH_ARGS:+, bench flags: $BENCH_ARGS}"
for round in $(seq "$ROUNDS"); do
    echo "== round $round: etcd"
    rm -rf "$WORK/data"
    start_etcd
    leader=$(etcd_leader)
    [ -n "$leader" ] || { echo "no etcd leader" >&2; exit 1; }
    for c in $CLIENTS; do bench etcd "$leader" "$c" "$round"; done
    stop_all
    echo "== round $round: keel"
    rm -rf "$WORK/data"
    start_keel3 "$KEEL" keel "$KEEL"
    for c in $CLIENTS; do bench keel "$KEEL_EPS" "$c" "$round"; done
    stop_all
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(target, clients, key):
    return statistics.median(r[key] for r in rows if r["target"] == target and r["clients"] == clients)
clients = sorted({r["clients"] for r in rows})
print()
print("medians of %d rounds (keel: durable, acknowledged after fdatasync on a quorum; etcd 3.4 defaults)" % max(r["round"] for r in rows))
print("| clients | etcd records/s | etcd p50 ms | etcd p99 ms | keel records/s | keel p50 ms | keel p99 ms | throughput keel/etcd | p50 etcd/keel |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for c in clients:
    e, k = med("etcd", c, "records_per_s"), med("keel", c, "records_per_s")
    ep50, kp50 = med("etcd", c, "p50_ms"), med("keel", c, "p50_ms")
    print("| %d | %.0f | %.2f | %.2f | %.0f | %.2f | %.2f | %.1fx | %.1fx |" % (
        c, e, ep50, med("etcd", c, "p99_ms"), k, kp50, med("keel", c, "p99_ms"), k / e, ep50 / kp50))
PY
echo "raw results: $RESULTS"
