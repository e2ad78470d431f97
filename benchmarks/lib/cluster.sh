# Shared by the benchmark scripts (sourced): the processes a run starts,
# their cleanup, and a 3-node keel cluster on loopback.
# The sourcing script sets WORK (its run directory) first.

PIDS=()

stop_all() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && wait "$p" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    stop_all
    rm -rf "$WORK/data"
}

# The client endpoints of start_keel3's cluster.
KEEL3_EPS=127.0.0.1:27070,127.0.0.1:27170,127.0.0.1:27270

# start_keel3 BIN LABEL CLI: starts nodes 1-3 of BIN (ports 27070+100*(i-1):
# client, peer, metrics; data in $WORK/data/LABEL<i>, logs in
# $WORK/LABEL<i>.log) and waits until CLI (a keel binary) sees a leader.
start_keel3() {
    local bin=$1 label=$2 cli=$3
    local peers="1=127.0.0.1:27071,2=127.0.0.1:27171,3=127.0.0.1:27271"
    for i in 1 2 3; do
        local b=$((27070 + 100 * (i - 1)))
        "$bin" server --id "$i" --data-dir "$WORK/data/$label$i" \
            --client-addr "127.0.0.1:$b" --peer-addr "127.0.0.1:$((b + 1))" \
            --metrics-addr "127.0.0.1:$((b + 2))" --peers "$peers" \
            --log-level warn >"$WORK/$label$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 100); do
        if "$cli" status --endpoints "$KEEL3_EPS" --output json --timeout 1s 2>/dev/null | grep -q '"role":"leader"'; then
            return
        fi
        sleep 0.1
    done
    echo "$label did not elect a leader; see $WORK/$label*.log" >&2
    exit 1
}
