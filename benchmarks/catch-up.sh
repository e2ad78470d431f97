#!/usr/bin/env bash
# How fast a new node catches up on 1 GiB of log, and what that does to the
# leader's append latency, in one run on this machine:
#
#   1. the disk's sequential write rate on the filesystem of the data
#      directories (1 MiB writes, one fdatasync at the end: through the page
#      cache, and with O_DIRECT), its O_DIRECT read rate, and the rate at
#      which the machine hands out untouched memory (see disk_test);
#   2. a 3-node cluster on loopback (release build, default settings,
#      fsync on) filled with FILL_MIB of log (64 KiB records, 16 clients);
#   3. a steady foreground load (`keel bench`: 8 closed-loop clients, 1 KiB
#      records) for WINDOW without catch-up;
#   4. the same load while a 4th node starts with `--join` (admitted as a
#      learner) and catches up: from its start until its applied index
#      reaches the leader's commit index; MB/s = the new node's log
#      directory at that moment / the time. The log service never compacts
#      its log, so the new node gets the log from index 1, not a snapshot;
#   5. every round and the medians, side by side.
#
# The load's figures in both windows are cut from its latency log
# (`keel bench --latency-log`) to exactly the window. Each round runs on
# fresh data directories and measures all of it (disk, fill, without,
# with), so "without" and "with" alternate. fsync stays on throughout.
#
#   benchmarks/catch-up.sh                          # 3 rounds, 1 GiB
#   ROUNDS=1 FILL_MIB=64 DISK_MIB=64 benchmarks/catch-up.sh   # a quick try
#   NEW_NODE_DIR=/dev/shm/catch-up benchmarks/catch-up.sh     # node 4 on tmpfs
#
# Settings (environment): ROUNDS (3), FILL_MIB (1024), FILL_SIZE (65536),
# FILL_CLIENTS (16), CLIENTS (8), SIZE (1024), WINDOW (10, seconds without
# catch-up), WARMUP (1s), DISK_MIB (1024), CATCHUP_TIMEOUT (900, seconds),
# BENCH_DIR (where the data goes; default target/), NEW_NODE_DIR (where
# node 4's data goes; default beside the others), KEEL (a keel binary to
# use instead of building one; CARGO_TARGET_DIR is honoured).
# Ports: 28070+100*i (client, peer, metrics) for nodes 1-4.
# Needs python3 (the disk test, the poller of the metrics endpoints, the
# tables).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
FILL_MIB=${FILL_MIB:-1024}
FILL_SIZE=${FILL_SIZE:-65536}
FILL_CLIENTS=${FILL_CLIENTS:-16}
CLIENTS=${CLIENTS:-8}
SIZE=${SIZE:-1024}
WINDOW=${WINDOW:-10}
WARMUP=${WARMUP:-1s}
DISK_MIB=${DISK_MIB:-1024}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-900}

command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
if [ -z "${KEEL:-}" ]; then
    echo "== building keel (release)"
    cargo build --release -q -p keel
    KEEL=${CARGO_TARGET_DIR:-$PWD/target}/release/keel
fi
[ -x "$KEEL" ] || { echo "no keel binary at $KEEL" >&2; exit 1; }

BASE=${BENCH_DIR:-$PWD/target}
mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/catch-up.XXXXXX")
RESULTS=$WORK/results.jsonl
DEV=$(df -P "$BASE" | awk 'NR==2 {print $1}')
DEVNAME=$(basename "$(readlink -f "$DEV")")
declare -A NODE_PID=()
LOAD_PID=""

stop_all() {
    for p in "${NODE_PID[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for p in "${NODE_PID[@]:-}"; do
        [ -n "$p" ] && wait "$p" 2>/dev/null || true
    done
    NODE_PID=()
}
cleanup() {
    [ -z "$LOAD_PID" ] || kill "$LOAD_PID" 2>/dev/null || true
    stop_all
    rm -rf "$WORK/data"
    [ -z "${NEW_NODE_DIR:-}" ] || rm -rf "$NEW_NODE_DIR/keel4"
}
trap cleanup EXIT

client_addr() { echo "127.0.0.1:$((28070 + 100 * ($1 - 1)))"; }
peer_addr() { echo "127.0.0.1:$((28071 + 100 * ($1 - 1)))"; }
metrics_addr() { echo "127.0.0.1:$((28072 + 100 * ($1 - 1)))"; }
EPS="$(client_addr 1),$(client_addr 2),$(client_addr 3)"
PEERS="1=$(peer_addr 1),2=$(peer_addr 2),3=$(peer_addr 3)"

start_node() { # id, then --peers ... or --join ...
    local i=$1
    shift
    "$KEEL" server --id "$i" --data-dir "$(datadir "$i")" \
        --client-addr "$(client_addr "$i")" --peer-addr "$(peer_addr "$i")" \
        --metrics-addr "$(metrics_addr "$i")" --log-level warn "$@" \
        >>"$WORK/keel$i.log" 2>&1 &
    NODE_PID[$i]=$!
}

start_cluster() {
    for i in 1 2 3; do start_node "$i" --peers "$PEERS"; done
    for _ in $(seq 100); do
        if "$KEEL" status --endpoints "$EPS" --output json --timeout 1s 2>/dev/null | grep -q '"role":"leader"'; then
            return
        fi
        sleep 0.1
    done
    echo "keel did not elect a leader; see $WORK/keel*.log" >&2
    exit 1
}

# Node 4 may live elsewhere (NEW_NODE_DIR, a diagnostic: e.g. /dev/shm to
# take its writes off the voters' disk).
datadir() { if [ "$1" = 4 ] && [ -n "${NEW_NODE_DIR:-}" ]; then echo "$NEW_NODE_DIR/keel4"; else echo "$WORK/data/keel$1"; fi; }
logdir() { echo "$(datadir "$1")/groups/0/log"; }
bytes_of() { du -sb "$1" 2>/dev/null | awk '{print $1}'; }
now() { date +%s.%N; }
# CPU seconds (user + system) of a process.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Sectors (512 B) written and read on the data disk.
disk_sectors() { awk -v d="$DEVNAME" '$3 == d {print $10, $6}' /proc/diskstats; }
leader_id() {
    "$KEEL" status --endpoints "$EPS" --output json --timeout 2s 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d.get("role")=="leader": print(d["id"]); break'
}

# 1. The disk, on the filesystem of the data directories: DISK_MIB of
# incompressible data in 1 MiB writes with one fdatasync at the end, through
# the page cache (what `dd bs=1M conv=fdatasync` measures) and with O_DIRECT
# (`dd bs=1M oflag=direct`: the device alone); the file read back with
# O_DIRECT. And how fast this machine hands out memory nobody touched
# recently (an anonymous mapping written once): on a virtual machine that
# reports free memory back to the host (virtio-balloon free page
# reporting), the first touch of such a page costs a fault in the host, and
# the page cache that a new node's log fills is made of such pages. Memory
# freed in the last seconds is still backed and much faster, so the test
# waits for it to go back first.
disk_test() {
    python3 - "$WORK/data/disk-test" "$DISK_MIB" <<'PY2'
import json, mmap, os, sys, time
path, mib = sys.argv[1], int(sys.argv[2])
MIB = 1 << 20
src = os.urandom(MIB)
aligned = mmap.mmap(-1, MIB)  # page-aligned, for O_DIRECT
aligned[:] = src
def cold():
    time.sleep(5)  # let recently freed memory go back to the host
def write(direct):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0), 0o644)
    t = time.monotonic()
    for _ in range(mib):
        os.write(fd, aligned if direct else src)
    os.fdatasync(fd)
    el = time.monotonic() - t
    os.close(fd)
    return mib * MIB / el / 1e6
cold()
m = mmap.mmap(-1, mib * MIB)
t = time.monotonic()
for i in range(mib):
    m[i * MIB:(i + 1) * MIB] = src
touch = mib * MIB / (time.monotonic() - t) / 1e6
m.close()
cold()
buffered = write(False)
direct = write(True)
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
t = time.monotonic()
n = 0
while True:
    r = os.readv(fd, [aligned])
    if r <= 0:
        break
    n += r
read = n / (time.monotonic() - t) / 1e6
os.close(fd)
os.unlink(path)
print(json.dumps({"disk_write_mbps": buffered, "disk_write_direct_mbps": direct,
                  "disk_read_direct_mbps": read, "memory_first_touch_mbps": touch}))
PY2
}

# The closed-loop load in the background until the stop file appears.
start_load() { # name clients size duration warmup
    rm -f "$WORK/stop.$1"
    "$KEEL" bench --endpoints "$EPS" --clients "$2" --size "$3" --duration "$4" \
        --warmup "$5" --stop-file "$WORK/stop.$1" --latency-log "$WORK/$1.lat" \
        --output json >"$WORK/$1.json" 2>"$WORK/$1.err" &
    LOAD_PID=$!
}
stop_load() { # name
    touch "$WORK/stop.$1"
    wait "$LOAD_PID" || { echo "keel bench failed: $(cat "$WORK/$1.err")" >&2; LOAD_PID=""; exit 1; }
    LOAD_PID=""
}

# Window figures from a latency log: operations sent at or after t0 and
# acknowledged by t1.
window_stats() { # latency-log t0 t1
    python3 - "$@" <<'PY'
import json, sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
a, b = int(t0 * 1e6), int(t1 * 1e6)
lat = []
with open(path) as f:
    for line in f:
        s, l = line.split()
        s, l = int(s), int(l)
        if s >= a and s + l <= b:
            lat.append(l)
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, round((len(lat) - 1) * p))] / 1000 if lat else 0.0
print(json.dumps({"secs": t1 - t0, "ops": len(lat), "ops_per_s": len(lat) / (t1 - t0),
                  "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
                  "max_ms": lat[-1] / 1000 if lat else 0.0}))
PY
}

# Per second of the catch-up window: the load's records/s, p99 and max, and
# node 4's applied index (from the poller's trace).
series() { # latency-log trace t0 t1
    python3 - "$@" <<'PY2'
import collections, sys
path, trace, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
by = collections.defaultdict(list)
for line in open(path):
    s, l = (int(x) for x in line.split())
    t = s / 1e6 - t0
    if 0 <= t and s / 1e6 + l / 1e6 <= t1:
        by[int(t)].append(l)
applied = {}
for line in open(trace):
    t, _, a = line.split()
    if a != "None":
        applied[int(float(t))] = int(a)
print("second records p99_ms max_ms node4_applied")
for sec in range(int(t1 - t0) + 1):
    l = sorted(by.get(sec, []))
    p99 = l[min(len(l) - 1, round((len(l) - 1) * 0.99))] / 1000 if l else 0
    print(sec, len(l), "%.2f" % p99, "%.2f" % (l[-1] / 1000 if l else 0), applied.get(sec, "-"))
PY2
}

# Polls the leader's commit index and then node 4's applied index (metrics
# endpoints) every 100 ms; returns when node 4 has applied what the leader
# had committed when it was asked just before. Prints the times and a trace.
wait_caught_up() { # leader t0 trace
    python3 - "$(metrics_addr "$1")" "$(metrics_addr 4)" "$2" "$CATCHUP_TIMEOUT" "$3" <<'PY'
import json, re, sys, time, urllib.request
leader, new, t0, timeout, trace = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def gauge(addr, name):
    try:
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=1).read().decode()
    except Exception:
        return None
    m = re.search(rf'^{name}{{[^}}]*group="0"[^}}]*}} (\d+)', body, re.M)
    return int(m.group(1)) if m else None
start_commit = gauge(leader, "keel_commit_index")
backlog_at = None
out = open(trace, "w")
while True:
    commit = gauge(leader, "keel_commit_index")
    applied = gauge(new, "keel_applied_index")
    t = time.time()
    out.write(f"{t - t0:.3f} {commit} {applied}\n")
    if applied is not None and commit is not None:
        if backlog_at is None and applied >= start_commit:
            backlog_at = t
        if applied >= commit:
            print(json.dumps({"t1": t, "backlog_s": (backlog_at or t) - t0, "start_commit": start_commit,
                              "end_commit": commit, "new_applied": applied}))
            break
    if t - t0 > timeout:
        print(json.dumps({"t1": t, "timeout": True, "start_commit": start_commit, "end_commit": commit,
                          "new_applied": applied}))
        sys.exit(1)
    time.sleep(0.1)
PY
}

# CPU seconds of the servers and the generator, and disk MB written/read,
# between two snapshots.
snap() { # -> "cpu1 cpu2 cpu3 cpu4 cpuload sectors_w sectors_r busy total"
    local s=""
    for i in 1 2 3 4; do
        if [ -n "${NODE_PID[$i]:-}" ]; then s+="$(cpu_of "${NODE_PID[$i]}") "; else s+="0 "; fi
    done
    # and the machine: busy and total jiffies (all CPUs; iowait counts as idle)
    echo "$s$(if [ -n "$LOAD_PID" ]; then cpu_of "$LOAD_PID"; else echo 0; fi) $(disk_sectors) $(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)"
}

# fdatasync latency (sum in seconds, count) of every node, from its metrics.
fsync_snap() {
    python3 - "$(metrics_addr 1)" "$(metrics_addr 2)" "$(metrics_addr 3)" "$(metrics_addr 4)" <<'PY2'
import json, re, sys, urllib.request
out = []
for addr in sys.argv[1:]:
    try:
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=1).read().decode()
        s = float(re.search(r'^keel_fsync_latency_seconds_sum{[^}]*group="0"[^}]*} (\S+)', body, re.M).group(1))
        c = float(re.search(r'^keel_fsync_latency_seconds_count{[^}]*group="0"[^}]*} (\S+)', body, re.M).group(1))
    except Exception:
        s, c = 0.0, 0.0
    out.append([s, c])
print(json.dumps(out))
PY2
}

round_json() { # round key json...
    python3 - "$@" <<'PY'
import json, sys
d = {"round": int(sys.argv[1])}
for a in sys.argv[2:]:
    k, v = a.split("=", 1)
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
print(json.dumps(d))
PY
}

usage_json() { # before after secs leader fsync-before fsync-after
    python3 - "$@" <<'PY'
import json, sys
b, a = [float(x) for x in sys.argv[1].split()], [float(x) for x in sys.argv[2].split()]
secs, leader = float(sys.argv[3]), int(sys.argv[4])
fb, fa = json.loads(sys.argv[5]), json.loads(sys.argv[6])
fsync = {}
for i in range(4):
    n = fa[i][1] - fb[i][1]
    fsync[f"node{i + 1}"] = {"count": n, "mean_ms": (fa[i][0] - fb[i][0]) / n * 1000 if n > 0 else None}
d = [y - x for x, y in zip(b, a)]
cpu = {f"node{i + 1}": d[i] / secs for i in range(4)}
print(json.dumps({"cpu_cores": cpu, "cpu_leader": d[leader - 1] / secs, "cpu_load": d[4] / secs,
                  "cpu_all": sum(d[:5]) / secs, "fsync": fsync,
                  "machine_busy": d[7] / d[8] if d[8] > 0 else None,
                  "disk_write_mbps": d[5] * 512 / secs / 1e6, "disk_read_mbps": d[6] * 512 / secs / 1e6}))
PY
}

echo "== $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r), data on $(df -T "$BASE" | awk 'NR==2 {print $1", "$2}')"
echo "== $ROUNDS rounds: fill ${FILL_MIB} MiB (${FILL_SIZE} B records, $FILL_CLIENTS clients), load $CLIENTS clients x $SIZE B, ${WINDOW}s without catch-up, then a 4th node catches up; fsync on (acknowledged after fdatasync on a quorum)"
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    echo "== round $round (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    rm -rf "$WORK/data"
    [ -z "${NEW_NODE_DIR:-}" ] || rm -rf "$NEW_NODE_DIR/keel4"
    mkdir -p "$WORK/data"
    loadavg=$(cut -d' ' -f1 /proc/loadavg)

    disk=$(disk_test)
    echo "   disk: $(echo "$disk" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("write %.0f MB/s (page cache, one fdatasync), %.0f MB/s (O_DIRECT); O_DIRECT read %.0f MB/s; memory first touch %.0f MB/s" % (d["disk_write_mbps"], d["disk_write_direct_mbps"], d["disk_read_direct_mbps"], d["memory_first_touch_mbps"]))')"

    start_cluster
    # 2. Fill until node 1's log directory holds FILL_MIB.
    t=$(now)
    start_load fill "$FILL_CLIENTS" "$FILL_SIZE" 3600s 0s
    while [ "$(bytes_of "$(logdir 1)")" -lt $((FILL_MIB << 20)) ]; do
        kill -0 "$LOAD_PID" 2>/dev/null || { echo "the fill stopped: $(cat "$WORK/fill.err")" >&2; exit 1; }
        sleep 0.2
    done
    stop_load fill
    fill_s=$(python3 -c "print($(now) - $t)")
    fill_bytes=$(bytes_of "$(logdir 1)")
    echo "   filled $((fill_bytes >> 20)) MiB of log in $(printf %.1f "$fill_s") s ($(python3 -c "print('%.0f' % ($fill_bytes / $fill_s / 1e6))") MB/s of log, 3 copies)"
    leader=$(leader_id)
    [ -n "$leader" ] || { echo "no leader after the fill; see $WORK/keel*.log" >&2; exit 1; }
    sleep 2

    # 3. Without catch-up.
    start_load "r$round.without" "$CLIENTS" "$SIZE" 3600s "$WARMUP"
    sleep 2
    f0=$(fsync_snap); t0=$(now); s0=$(snap)
    sleep "$WINDOW"
    t1=$(now); s1=$(snap); f1=$(fsync_snap)
    stop_load "r$round.without"
    without=$(window_stats "$WORK/r$round.without.lat" "$t0" "$t1")
    without_use=$(usage_json "$s0" "$s1" "$(python3 -c "print($t1 - $t0)")" "$leader" "$f0" "$f1")
    echo "   without catch-up: $(echo "$without" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f records/s  p50 %.2f  p99 %.2f  max %.2f ms" % (d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["max_ms"]))')"

    # 4. With catch-up: node 4 joins (a learner) while the same load runs.
    leader_bytes=$(bytes_of "$(logdir "$leader")")
    start_load "r$round.with" "$CLIENTS" "$SIZE" 3600s "$WARMUP"
    sleep 2
    f0=$(fsync_snap); t0=$(now); s0=$(snap)
    start_node 4 --join "$EPS"
    caught=$(wait_caught_up "$leader" "$t0" "$WORK/r$round.trace") || {
        echo "node 4 did not catch up within ${CATCHUP_TIMEOUT}s: $caught" >&2
        exit 1
    }
    t1=$(echo "$caught" | python3 -c 'import json,sys; print(json.load(sys.stdin)["t1"])')
    s1=$(snap); f1=$(fsync_snap)
    new_bytes=$(bytes_of "$(logdir 4)")
    stop_load "r$round.with"
    with=$(window_stats "$WORK/r$round.with.lat" "$t0" "$t1")
    series "$WORK/r$round.with.lat" "$WORK/r$round.trace" "$t0" "$t1" >"$WORK/r$round.series"
    with_use=$(usage_json "$s0" "$s1" "$(python3 -c "print($t1 - $t0)")" "$leader" "$f0" "$f1")
    catchup_s=$(python3 -c "print($t1 - $t0)")
    echo "   with catch-up: $(echo "$with" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f records/s  p50 %.2f  p99 %.2f  max %.2f ms" % (d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["max_ms"]))')"
    echo "   node 4 caught up on $((new_bytes >> 20)) MiB of log in $(printf %.1f "$catchup_s") s: $(python3 -c "print('%.0f' % ($new_bytes / $catchup_s / 1e6))") MB/s"
    round_json "$round" "loadavg=$loadavg" "disk=$disk" "fill_s=$fill_s" "fill_bytes=$fill_bytes" \
        "leader=$leader" "without=$without" "without_use=$without_use" "with=$with" "with_use=$with_use" \
        "caught=$caught" "catchup_s=$catchup_s" "leader_bytes_at_join=$leader_bytes" \
        "new_bytes=$new_bytes" >>"$RESULTS"
    stop_all
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def mbps(r): return r["new_bytes"] / r["catchup_s"] / 1e6
def voters_fsync(r, w):
    f = [r[w]["fsync"]["node%d" % i] for i in (1, 2, 3) if i != r["leader"]]
    n = sum(x["count"] for x in f)
    return sum(x["count"] * (x["mean_ms"] or 0) for x in f) / n if n else 0.0
cols = [
    ("disk write MB/s (1 MiB writes, one fdatasync)", lambda r: r["disk"]["disk_write_mbps"], "%.0f"),
    ("disk write MB/s (O_DIRECT)", lambda r: r["disk"]["disk_write_direct_mbps"], "%.0f"),
    ("disk read MB/s (O_DIRECT)", lambda r: r["disk"]["disk_read_direct_mbps"], "%.0f"),
    ("memory first touch MB/s", lambda r: r["disk"]["memory_first_touch_mbps"], "%.0f"),
    ("fill s", lambda r: r["fill_s"], "%.1f"),
    ("log caught up MiB", lambda r: r["new_bytes"] / 2**20, "%.0f"),
    ("catch-up s", lambda r: r["catchup_s"], "%.1f"),
    ("catch-up MB/s", mbps, "%.0f"),
    ("catch-up / disk write (page cache)", lambda r: mbps(r) / r["disk"]["disk_write_mbps"], "%.2f"),
    ("catch-up / disk write (O_DIRECT)", lambda r: mbps(r) / r["disk"]["disk_write_direct_mbps"], "%.2f"),
    ("records/s without", lambda r: r["without"]["ops_per_s"], "%.0f"),
    ("records/s with", lambda r: r["with"]["ops_per_s"], "%.0f"),
    ("p50 ms without", lambda r: r["without"]["p50_ms"], "%.2f"),
    ("p50 ms with", lambda r: r["with"]["p50_ms"], "%.2f"),
    ("p99 ms without", lambda r: r["without"]["p99_ms"], "%.2f"),
    ("p99 ms with", lambda r: r["with"]["p99_ms"], "%.2f"),
    ("max ms without", lambda r: r["without"]["max_ms"], "%.2f"),
    ("max ms with", lambda r: r["with"]["max_ms"], "%.2f"),
    ("p99 with / without", lambda r: r["with"]["p99_ms"] / r["without"]["p99_ms"], "%.2f"),
    ("leader CPU cores without", lambda r: r["without_use"]["cpu_leader"], "%.2f"),
    ("leader CPU cores with", lambda r: r["with_use"]["cpu_leader"], "%.2f"),
    ("node 4 CPU cores", lambda r: r["with_use"]["cpu_cores"]["node4"], "%.2f"),
    ("CPU cores, 4 servers + generator, without", lambda r: r["without_use"]["cpu_all"], "%.2f"),
    ("CPU cores, 4 servers + generator, with", lambda r: r["with_use"]["cpu_all"], "%.2f"),
    ("machine CPU busy (all processes), without", lambda r: r["without_use"]["machine_busy"], "%.2f"),
    ("machine CPU busy (all processes), with", lambda r: r["with_use"]["machine_busy"], "%.2f"),
    ("disk MB/s written, without", lambda r: r["without_use"]["disk_write_mbps"], "%.0f"),
    ("disk MB/s written, with", lambda r: r["with_use"]["disk_write_mbps"], "%.0f"),
    ("leader write + fdatasync mean ms, without", lambda r: r["without_use"]["fsync"]["node%d" % r["leader"]]["mean_ms"], "%.2f"),
    ("leader write + fdatasync mean ms, with", lambda r: r["with_use"]["fsync"]["node%d" % r["leader"]]["mean_ms"], "%.2f"),
    ("other voters' write + fdatasync mean ms, without", lambda r: voters_fsync(r, "without_use"), "%.2f"),
    ("other voters' write + fdatasync mean ms, with", lambda r: voters_fsync(r, "with_use"), "%.2f"),
    ("node 4 write + fdatasync mean ms", lambda r: r["with_use"]["fsync"]["node4"]["mean_ms"], "%.2f"),
    ("load average at round start", lambda r: float(r["loadavg"]), "%.2f"),
]
print()
print("fsync on: every append acknowledged after fdatasync on a quorum; node 4 writes and fdatasyncs the log it receives")
print("| | " + " | ".join("round %d" % r["round"] for r in rows) + " | median |")
print("|--|" + "--:|" * (len(rows) + 1))
for name, f, fmt in cols:
    vals = [f(r) for r in rows]
    print("| %s | %s | %s |" % (name, " | ".join(fmt % v for v in vals), fmt % statistics.median(vals)))
PY
echo "raw results: $RESULTS (latency logs, catch-up traces and server logs beside it)"
