#!/usr/bin/env bash
# Fan-out benchmark: N rexecd on loopback (127.0.0.1:0, each port read from its
# readiness line), then `rexec -H ... (N hosts) -- hostname` RUNS times. Every
# run must print exactly one `HOST | name` line per host. Prints the median wall
# time; stops every rexecd it started.
#
#   bench/fanout.sh                 # 100 hosts, 10 runs
#   HOSTS=10 RUNS=20 bench/fanout.sh
#   PARALLEL=100 bench/fanout.sh    # extra flags for rexec: --parallel 100
#   WIDE=1 HOSTS=1000 bench/fanout.sh
#                                   # rexecd on 127.0.[2-5].[1-250]:PORT (one port,
#                                   # PORT=50051 unless set), named with
#                                   # `-w 127.0.[2-5].[1-250]:PORT`, as a fleet is
set -euo pipefail

HOSTS=${HOSTS:-100}
RUNS=${RUNS:-10}
PARALLEL=${PARALLEL:-}
WIDE=${WIDE:-}
PORT=${PORT:-50051}
if [[ -n "$WIDE" ]] && ((HOSTS > 1000)); then
    echo "fanout.sh: WIDE covers 127.0.[2-5].[1-250], at most 1000 hosts" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
if [[ -z "${REXEC_BIN_DIR:-}" ]]; then
    cargo build --release --quiet --bin rexec --bin rexecd
    REXEC_BIN_DIR=target/release
fi
rexecd="$REXEC_BIN_DIR/rexecd"
rexec="$REXEC_BIN_DIR/rexec"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Host i of a WIDE fleet: 127.0.(2 + i/250).(1 + i%250).
wide_ip() { echo "127.0.$((2 + $1 / 250)).$((1 + $1 % 250))"; }
for ((i = 0; i < HOSTS; i++)); do
    listen=127.0.0.1:0
    [[ -n "$WIDE" ]] && listen="$(wide_ip "$i"):$PORT"
    "$rexecd" --listen "$listen" >"$work/ready.$i" 2>/dev/null &
    pids+=($!)
done
args=()
addrs=()
for ((i = 0; i < HOSTS; i++)); do
    for ((wait_ms = 0; ; wait_ms += 10)); do
        line=$(head -n 1 "$work/ready.$i")
        [[ "$line" == listening\ grpc=* ]] && break
        if ((wait_ms > 10000)); then
            echo "fanout.sh: rexecd $i printed no readiness line" >&2
            exit 1
        fi
        sleep 0.01
    done
    addr=${line#listening grpc=}
    addr=${addr%% *}
    addrs+=("$addr")
    [[ -z "$WIDE" ]] && args+=(-H "$addr")
done
if [[ -n "$WIDE" ]]; then
    last=$((HOSTS - 1))
    # Whole /24s as one range each, the last one partial: 127.0.[2-4].[1-250],127.0.5.[1-N].
    set_text=""
    full=$((HOSTS / 250))
    ((full > 0)) && set_text="127.0.[2-$((1 + full))].[1-250]:$PORT"
    if ((HOSTS % 250)); then
        [[ -n "$set_text" ]] && set_text+=","
        set_text+="127.0.$((2 + last / 250)).[1-$((1 + last % 250))]:$PORT"
    fi
    args+=(-w "$set_text")
    echo "fanout.sh: -w $set_text ($("$rexec" nodes -c "$set_text") hosts)" >&2
fi
[[ -n "$PARALLEL" ]] && args+=(--parallel "$PARALLEL")

name=$(hostname)
expected=$(printf "%s | $name\n" "${addrs[@]}" | sort)
times=()
for ((run = 1; run <= RUNS; run++)); do
    start=$(date +%s%N)
    "$rexec" "${args[@]}" -- hostname </dev/null >"$work/out" 2>"$work/err" || {
        echo "fanout.sh: run $run: rexec failed:" >&2
        cat "$work/err" >&2
        exit 1
    }
    end=$(date +%s%N)
    if [[ "$(sort "$work/out")" != "$expected" ]]; then
        echo "fanout.sh: run $run: lines missing or wrong:" >&2
        diff <(echo "$expected") <(sort "$work/out") >&2 || true
        exit 1
    fi
    times+=($(((end - start) / 1000)))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
median=${sorted[$((RUNS / 2))]}
printf 'hosts=%d runs=%d median=%d.%03d ms min=%d.%03d ms max=%d.%03d ms (every run: %d lines, all present)\n' \
    "$HOSTS" "$RUNS" $((median / 1000)) $((median % 1000)) \
    $((sorted[0] / 1000)) $((sorted[0] % 1000)) \
    $((sorted[RUNS - 1] / 1000)) $((sorted[RUNS - 1] % 1000)) "$HOSTS"
if command -v hyperfine >/dev/null; then
    hyperfine --warmup 2 --runs "$RUNS" -N "$rexec ${args[*]} -- hostname"
fi
