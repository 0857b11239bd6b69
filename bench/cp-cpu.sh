#!/usr/bin/env bash
# Where a 1 GiB `rexec cp` spends its CPU, next to the exec-stream trick:
# wall time, the client's CPU and rexecd's CPU (utime + stime from
# /proc/PID/stat, children not included) for each way, RUNS rounds, files
# on /dev/shm so no disk decides anything. `cp` checks each file with
# XXH3-128 (its default), `cp-sha` with SHA-256 (`--digest sha256`, the
# API's default): the gap between them is what SHA-256 on both ends costs;
# see BENCHMARKS.md.
#
# Usage: bench/cp-cpu.sh        (RUNS=N, default 5; about two minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
cargo build --release --quiet --bin rexec --bin rexecd
REXEC=$PWD/target/release/rexec
FILES=$(mktemp -d /dev/shm/rexec-cp-cpu.XXXXXX)
"$PWD/target/release/rexecd" --listen 127.0.0.1:0 >"$FILES/ready" 2>"$FILES/log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$FILES"' EXIT
for _ in $(seq 50); do grep -q '^listening' "$FILES/ready" && break; sleep 0.1; done
ADDR=$(grep -o 'grpc=[^ ]*' "$FILES/ready" | cut -d= -f2)
head -c $((1 << 30)) /dev/urandom >"$FILES/src.bin"
TICK=$(getconf CLK_TCK)
server_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }

one() { # label cmd... -> "label wall client_cpu server_cpu"
  local label=$1 before after
  shift
  before=$(server_ticks)
  /usr/bin/time -o "$FILES/time" -f '%e %U %S' "$@" >/dev/null 2>&1
  after=$(server_ticks)
  read -r wall user sys <"$FILES/time"
  echo "$label $wall $(echo "$user + $sys" | bc) $(echo "scale=2; ($after - $before) / $TICK" | bc)"
  rm -f "$FILES/out.bin"
}

for _ in $(seq "$RUNS"); do
  one "cp-up" "$REXEC" --addr "$ADDR" cp "$FILES/src.bin" ":$FILES/out.bin"
  one "cp-sha-up" "$REXEC" --addr "$ADDR" cp --digest sha256 "$FILES/src.bin" ":$FILES/out.bin"
  one "cat-up" sh -c "exec \"\$0\" --addr $ADDR -- 'cat > $FILES/out.bin' < $FILES/src.bin" "$REXEC"
  one "cp-down" "$REXEC" --addr "$ADDR" cp ":$FILES/src.bin" "$FILES/out.bin"
  one "cp-sha-down" "$REXEC" --addr "$ADDR" cp --digest sha256 ":$FILES/src.bin" "$FILES/out.bin"
  one "cat-down" sh -c "exec \"\$0\" --addr $ADDR -- cat $FILES/src.bin > $FILES/out.bin" "$REXEC"
done | sort -k1,1 -k2,2n | awk '
  { wall[$1] = wall[$1] " " $2; c[$1] += $3; s[$1] += $4; n[$1]++ }
  END {
    printf "%-11s %28s %11s %11s\n", "way", "wall s (sorted)", "client cpu", "rexecd cpu"
    split("cp-up cp-sha-up cat-up cp-down cp-sha-down cat-down", order, " ")
    for (i = 1; i <= 6; i++) {
      k = order[i]
      printf "%-11s %28s %11.2f %11.2f\n", k, wall[k], c[k] / n[k], s[k] / n[k]
    }
  }'
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
