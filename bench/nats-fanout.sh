#!/usr/bin/env bash
# NATS fan-out against direct gRPC fan-out to the same daemons: one local
# nats-server, N rexecd on 127.0.0.1:0 that are also agents on it (named
# a0 .. a<N-1>), then RUNS rounds of, side by side,
#   rexec -H ADDR ... -- hostname                 (a connection per host)
#   rexec --nats URL -w 'a[0-<N-1>]' -- hostname  (one connection, the broker)
# Every run must print one `HOST | name` line per host. Prints each median,
# the ratio, discovery time, the broker's and the client's CPU per exec, and
# the agents' memory. Stops everything it started.
#
#   bench/nats-fanout.sh                       # 200 agents, 10 rounds
#   HOSTS=1000 RUNS=5 bench/nats-fanout.sh
#   PARALLEL=200 bench/nats-fanout.sh          # --parallel for both
set -euo pipefail

HOSTS=${HOSTS:-200}
RUNS=${RUNS:-10}
PARALLEL=${PARALLEL:-}
cd "$(dirname "$0")/.."
if [[ -z "${REXEC_BIN_DIR:-}" ]]; then
    cargo build --release --quiet --bin rexec --bin rexecd
    REXEC_BIN_DIR=target/release
fi
rexecd="$REXEC_BIN_DIR/rexecd"
rexec="$REXEC_BIN_DIR/rexec"
nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
[[ -x "$nats_server" ]] || { echo "nats-fanout.sh: nats-server not found (apt-get install nats-server)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
broker=""
cleanup() {
    for pid in "${pids[@]}" $broker; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" $broker; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="nats://127.0.0.1:$port"
"$nats_server" -a 127.0.0.1 -p "$port" >"$work/nats.log" 2>&1 &
broker=$!
for ((wait_ms = 0; ; wait_ms += 10)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    ((wait_ms > 10000)) && { echo "nats-fanout.sh: nats-server did not start" >&2; exit 1; }
    sleep 0.01
done

ulimit -n 65536 2>/dev/null || true
for ((i = 0; i < HOSTS; i++)); do
    "$rexecd" --listen 127.0.0.1:0 --insecure-no-auth --nats "$url" --nats-name "a$i" \
        >"$work/ready.$i" 2>/dev/null &
    pids+=($!)
done
direct=()
for ((i = 0; i < HOSTS; i++)); do
    for ((wait_ms = 0; ; wait_ms += 10)); do
        line=$(head -n 1 "$work/ready.$i")
        [[ "$line" == listening\ grpc=* ]] && break
        ((wait_ms > 20000)) && { echo "nats-fanout.sh: rexecd $i printed no readiness line" >&2; exit 1; }
        sleep 0.01
    done
    addr=${line#listening grpc=}
    direct+=(-H "${addr%% *}")
done
extra=()
[[ -n "$PARALLEL" ]] && extra+=(--parallel "$PARALLEL")
nodeset="a[0-$((HOSTS - 1))]"
name=$(hostname)

# µs of CPU (user + system) a process has used.
cpu_us() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000000 / hz) }' "/proc/$1/stat"; }

start=$(date +%s%N)
"$rexec" --nats "$url" --connect-timeout 10s --discover "$nodeset" >"$work/discovered"
discover_ms=$((($(date +%s%N) - start) / 1000000))
[[ $(wc -l <"$work/discovered") -eq $HOSTS ]] || { echo "nats-fanout.sh: discovery found $(wc -l <"$work/discovered") of $HOSTS" >&2; exit 1; }

# One run: its wall time in µs, after checking every host's line; the
# client's CPU goes to $work/client_cpu.
run() {
    local label=$1
    shift
    local start end
    start=$(date +%s%N)
    /usr/bin/time -f '%U %S' -o "$work/time" "$rexec" "$@" -- hostname </dev/null >"$work/out" 2>"$work/err" || {
        echo "nats-fanout.sh: $label run failed:" >&2
        tail -5 "$work/err" >&2
        exit 1
    }
    end=$(date +%s%N)
    if [[ $(grep -c " | $name\$" "$work/out") -ne $HOSTS ]]; then
        echo "nats-fanout.sh: $label run: $(grep -c " | $name\$" "$work/out") of $HOSTS lines" >&2
        exit 1
    fi
    awk '{ print int(($1 + $2) * 1000000) }' "$work/time" >>"$work/client_cpu.$label"
    echo $(((end - start) / 1000))
}

grpc_times=()
nats_times=()
broker_before=$(cpu_us "$broker")
broker_cpu=0
for ((round = 1; round <= RUNS; round++)); do
    grpc_times+=("$(run grpc "${direct[@]}" "${extra[@]}")")
    before=$(cpu_us "$broker")
    nats_times+=("$(run nats --nats "$url" --connect-timeout 10s -w "$nodeset" "${extra[@]}")")
    broker_cpu=$((broker_cpu + $(cpu_us "$broker") - before))
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int(NR / 2) + 1] }'; }
ms() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
grpc=$(median "${grpc_times[@]}")
nats=$(median "${nats_times[@]}")
client_grpc=$(median $(cat "$work/client_cpu.grpc"))
client_nats=$(median $(cat "$work/client_cpu.nats"))
rss_kib=0
for pid in "${pids[@]}"; do
    rss_kib=$((rss_kib + $(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status")))
done
broker_rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$broker/status")

echo "hosts=$HOSTS rounds=$RUNS ${PARALLEL:+parallel=$PARALLEL }(every run: $HOSTS lines, all present)"
echo "  direct gRPC fan-out : median $(ms "$grpc") ms"
echo "  NATS fan-out        : median $(ms "$nats") ms  ($(awk -v a="$nats" -v b="$grpc" 'BEGIN { printf "%.2f", a / b }')x direct)"
echo "  discovery of all    : $discover_ms ms"
echo "  client CPU per run  : gRPC $(ms "$client_grpc") ms, NATS $(ms "$client_nats") ms"
echo "  broker CPU per exec : $((broker_cpu / RUNS / HOSTS)) us (nats-server, mean over $RUNS runs)"
echo "  memory              : agents $((rss_kib / HOSTS)) KiB private (RssAnon) each, nats-server $broker_rss KiB RSS"
