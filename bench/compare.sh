#!/usr/bin/env bash
# rexec side by side with the incumbents, in one run on this machine:
# the local floor (`sh -c true`, a local pipe), OpenSSH on loopback (a private
# sshd), the classic Python 4-byte-prefix server, a raw TCP relay (the
# ceiling), rexec over gRPC and rexec's legacy listener. Prints a table of
# medians with ratios to ssh, to the relay and to the local floor; see
# BENCHMARKS.md for what each figure means and what limits it.
#
# Usage: bench/compare.sh            (about 8 minutes; RUNS=N for more runs,
#                                    FIGURES="a e" for some figures only)
#
# Everything listens on 127.0.0.1 only. Installs openssh-server with apt-get
# when sshd is missing. The private sshd has its own config, host key and
# authorized key in a temp dir (nothing is added to ~/.ssh, and ~/.ssh is
# restored exactly if anything touched it); every process started here is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
FIGURES=${FIGURES:-a b c d e f}
wants() { [[ " $FIGURES " == *" $1 "* ]]; }
MEASURE="python3 bench/measure.py"
GIB=$((1 << 30))

need() { command -v "$1" >/dev/null 2>&1; }
SSHD=/usr/sbin/sshd
if [[ ! -x $SSHD ]] || ! need ssh || ! need ssh-keygen; then
  echo "compare: installing openssh-server (for the ssh rows)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
fi

cargo build --release --quiet
REXEC=$PWD/target/release/rexec
REXECD=$PWD/target/release/rexecd

WORK=$(mktemp -d /tmp/rexec-compare.XXXXXX)
RESULTS=$WORK/results.jsonl
PIDS=()
SSH_DIR=$HOME/.ssh
SSH_DIR_EXISTED=false
SSH_DIR_STATE=""
RUN_SSHD_CREATED=false
ssh_dir_state() { [[ -e $SSH_DIR ]] && find "$SSH_DIR" -printf '%p %m %s %T@\n' 2>/dev/null | sort || true; }
if [[ -e $SSH_DIR ]]; then
  SSH_DIR_EXISTED=true
  tar -C "$HOME" -cpf "$WORK/dot-ssh.tar" .ssh
fi
SSH_DIR_STATE=$(ssh_dir_state)

print_table() {
  [[ -s $RESULTS ]] || return 0
  echo
  echo "rexec compare — $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), load at end $(cut -d' ' -f1-3 /proc/loadavg)"
  $MEASURE table "$RESULTS"
}

cleanup() {
  set +e
  print_table
  for control in "$WORK"/ssh-control*; do
    [[ -S $control ]] && ssh -F "$WORK/ssh_config" -o ControlPath="$control" -O exit bench >/dev/null 2>&1
  done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ $(ssh_dir_state) != "$SSH_DIR_STATE" ]]; then
    echo "compare: restoring $SSH_DIR" >&2
    rm -rf "$SSH_DIR"
    $SSH_DIR_EXISTED && tar -C "$HOME" -xpf "$WORK/dot-ssh.tar"
  fi
  $RUN_SSHD_CREATED && rmdir /run/sshd 2>/dev/null
  rm -rf "$WORK" ${FILES_TMPFS:+"$FILES_TMPFS"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM

record() { # figure system json-list-of-values
  [[ $3 == \[?*\] ]] || { note "no figure for $1 / $2"; exit 1; }
  printf '{"figure":"%s","system":"%s","values":%s}\n' "$1" "$2" "$3" >>"$RESULTS"
}
# seconds per run (JSON list) -> the figure's unit
to_mbps() { python3 -c "import json,sys; print(json.dumps([$GIB/1e6/s for s in json.load(sys.stdin)]))"; }
to_ms() { python3 -c "import json,sys; print(json.dumps([s*1e3 for s in json.load(sys.stdin)]))"; }
bench_field() { # rexec bench JSON objects (one a line) -> list of one field (a.b for nested)
  python3 -c "
import functools, json, sys
keys = sys.argv[1].split('.')
print(json.dumps([functools.reduce(lambda o, k: o[k], keys, json.loads(l)) for l in sys.stdin if l.strip()]))" "$1"
}
wait_line() { # file pattern -> waits up to 10 s for a line matching pattern
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "compare: no '$2' in $1" >&2; cat "$1" >&2; return 1
}
note() { echo "compare: $*" >&2; }

# --- servers -----------------------------------------------------------------
"$REXECD" --listen 127.0.0.1:0 --legacy-listen 127.0.0.1:0 --legacy-allow-anonymous --legacy-max-output 2GiB \
  >"$WORK/rexecd.out" 2>"$WORK/rexecd.log" &
REXECD_PID=$!
PIDS+=("$REXECD_PID")
wait_line "$WORK/rexecd.out" listening
GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$WORK/rexecd.out")
LEGACY=$(sed -n 's/.*legacy=\([^ ]*\).*/\1/p' "$WORK/rexecd.out")

python3 bench/classic_server.py 0 >"$WORK/classic.out" 2>&1 &
PIDS+=($!)
wait_line "$WORK/classic.out" listening
CLASSIC=127.0.0.1:$(awk '{print $2}' "$WORK/classic.out")

python3 bench/relay.py 0 >"$WORK/relay.out" 2>&1 &
PIDS+=($!)
wait_line "$WORK/relay.out" listening
RELAY=127.0.0.1:$(awk '{print $2}' "$WORK/relay.out")

# Private sshd: own config, host key and authorized key in $WORK. The remote
# user's shell still runs each command, so SetEnv SHLVL=1 keeps bash from
# sourcing ~/.bashrc (it does so for ssh only at shell level 1): ssh is
# measured, not the rc files.
SSH_PORT=$($MEASURE free-port)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
cat >"$WORK/sshd_config" <<CONF
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $WORK/ssh_host_ed25519_key
PidFile $WORK/sshd.pid
AuthorizedKeysFile $WORK/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
PrintMotd no
PrintLastLog no
SetEnv SHLVL=1
# scp (OpenSSH 9) speaks SFTP by default.
Subsystem sftp internal-sftp
LogLevel ERROR
CONF
cat >"$WORK/ssh_config" <<CONF
Host bench
  HostName 127.0.0.1
  Port $SSH_PORT
  User $(id -un)
  IdentityFile $WORK/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $WORK/known_hosts
  StrictHostKeyChecking accept-new
  BatchMode yes
  LogLevel ERROR
  ControlPath $WORK/ssh-control
  ControlMaster no
CONF
if [[ ! -d /run/sshd ]]; then mkdir -p /run/sshd && RUN_SSHD_CREATED=true; fi
"$SSHD" -D -e -f "$WORK/sshd_config" 2>"$WORK/sshd.log" &
PIDS+=($!)
SSH=(ssh -F "$WORK/ssh_config" -o ControlPath=none)
for _ in $(seq 100); do "${SSH[@]}" bench true 2>/dev/null && break; sleep 0.1; done
"${SSH[@]}" bench true || { cat "$WORK/sshd.log" >&2; exit 1; }
# Masters for the rows that reuse a connection (default cipher, and aes128-gcm).
ssh -F "$WORK/ssh_config" -o ControlMaster=yes -o ControlPersist=yes -fN bench
SSH_WARM=(ssh -F "$WORK/ssh_config")
ssh -F "$WORK/ssh_config" -o ControlPath="$WORK/ssh-control-aes" -c aes128-gcm@openssh.com \
  -o ControlMaster=yes -o ControlPersist=yes -fN bench
SSH_AES=(ssh -F "$WORK/ssh_config" -o ControlPath="$WORK/ssh-control-aes")
note "servers up: rexecd grpc=$GRPC legacy=$LEGACY classic=$CLASSIC relay=$RELAY sshd=127.0.0.1:$SSH_PORT; load: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- (a) 1 GiB stream to /dev/null ---------------------------------------------
STREAM="head -c $GIB /dev/zero"
if wants a; then
note "(a) 1 GiB stream, $RUNS rounds of one run per system"
# Round robin: a spell of load from elsewhere falls on every system alike,
# which keeps the ratios steadier than running each system's runs in a row.
for _ in $(seq "$RUNS"); do
  record stream local "$($MEASURE times 1 -- sh -c "$STREAM | cat" | to_mbps)"
  record stream relay "$($MEASURE relay "$RELAY" 1 "$STREAM" | to_mbps)"
  record stream ssh "$($MEASURE times 1 -- "${SSH_WARM[@]}" bench "$STREAM" | to_mbps)"
  record stream "ssh aes128-gcm" "$($MEASURE times 1 -- "${SSH_AES[@]}" bench "$STREAM" | to_mbps)"
  record stream "classic python" "$($MEASURE classic "$CLASSIC" 1 "$STREAM" | to_mbps)"
  record stream "rexec grpc (CLI)" "$($MEASURE times 1 -- "$REXEC" --addr "$GRPC" -- "$STREAM" | to_mbps)"
  record stream "rexec legacy (classic client)" "$($MEASURE classic "$LEGACY" 1 "$STREAM" | to_mbps)"
done

fi

# --- (b) warm `true`: latency on a connection already open -------------------
if wants b; then
note "(b) warm true"
for _ in $(seq "$RUNS"); do
  record warm local "$($MEASURE times 200 -- sh -c true | to_ms)"
  record warm "relay (new conn)" "$($MEASURE relay "$RELAY" 100 true | to_ms)"
  record warm ssh "$($MEASURE times 20 -- "${SSH_WARM[@]}" bench true | to_ms)"
  record warm "classic python" "$($MEASURE classic "$CLASSIC" 10 true | to_ms)"
done
record warm "rexec grpc" "$(for _ in $(seq "$RUNS"); do "$REXEC" bench --addr "$GRPC" -c 1 -n 500 --json -- true; done | bench_field latency_ms.p50)"
record warm "rexec legacy" "$(for _ in $(seq "$RUNS"); do "$REXEC" bench --legacy --addr "$LEGACY" -c 1 -n 500 --json -- true; done | bench_field latency_ms.p50)"

fi

# --- (c) one-shot CLI: a new process and a new connection per call -------------
if wants c; then
note "(c) one-shot CLI"
record oneshot local "$($MEASURE times $((RUNS * 40)) -- sh -c true | to_ms)"
record oneshot ssh "$($MEASURE times $((RUNS * 2)) -- "${SSH[@]}" bench true | to_ms)"
record oneshot "rexec grpc" "$($MEASURE times $((RUNS * 40)) -- "$REXEC" --addr "$GRPC" -- true | to_ms)"
record oneshot "rexec legacy" "$($MEASURE times $((RUNS * 40)) -- "$REXEC" --legacy --addr "$LEGACY" -- true | to_ms)"

fi

# --- (d) execs/s with 64 in flight ------------------------------------------------
if wants d; then
note "(d) execs/s at c=64"
for _ in $(seq 3); do
  record rate "local (2 parallel)" "[$($MEASURE rate 2 3 -- sh -c true)]"
  record rate "rexec grpc" "$("$REXEC" bench --addr "$GRPC" -c 64 --duration 3s --json -- true | bench_field execs_per_sec)"
  record rate "rexec legacy" "$("$REXEC" bench --legacy --addr "$LEGACY" -c 64 --duration 3s --json -- true | bench_field execs_per_sec)"
done

fi

# --- (f) 1 GiB file up and down ------------------------------------------------
if wants f; then
note "(f) 1 GiB file copy, $RUNS rounds of one run per system"
# Files live on a tmpfs when /dev/shm has room, so the disk's writeback
# throttling (which falls on whoever writes when it starts) does not decide
# the ratios: what is compared is the transport. Random bytes, so nothing is
# flattered by compression. `ssh` is scp with its default cipher, on its own
# connection; `local` is a pipe through cat, the floor of any copy. `rexec
# cp` checks each file with XXH3-128, its default; the `--digest sha256` row
# with SHA-256, what a client of the API gets unless it asks.
FILES=$WORK
if [[ $(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1) -gt $((4 * GIB)) ]]; then
  FILES=$(mktemp -d /dev/shm/rexec-compare.XXXXXX)
  FILES_TMPFS=$FILES
fi
head -c $GIB /dev/urandom >"$FILES/copy.bin"
WANT=$(sha256sum <"$FILES/copy.bin")
SCP=(scp -q -F "$WORK/ssh_config" -o ControlPath=none)
copied() { # file -> checks it is the original, then removes it
  [[ $(sha256sum <"$1") == "$WANT" ]] || { note "$1 differs from the original"; exit 1; }
  rm -f "$1"
}
for _ in $(seq "$RUNS"); do
  record copy-up local "$($MEASURE times 1 -- sh -c "cat <$FILES/copy.bin >$FILES/up.bin" | to_mbps)"
  record copy-down local "$($MEASURE times 1 -- sh -c "cat <$FILES/up.bin >$FILES/down.bin" | to_mbps)"
  copied "$FILES/up.bin"; copied "$FILES/down.bin"
  record copy-up ssh "$($MEASURE times 1 -- "${SCP[@]}" "$FILES/copy.bin" "bench:$FILES/up.bin" | to_mbps)"
  record copy-down ssh "$($MEASURE times 1 -- "${SCP[@]}" "bench:$FILES/up.bin" "$FILES/down.bin" | to_mbps)"
  copied "$FILES/up.bin"; copied "$FILES/down.bin"
  record copy-up "rexec cp" "$($MEASURE times 1 -- "$REXEC" --addr "$GRPC" cp "$FILES/copy.bin" ":$FILES/up.bin" | to_mbps)"
  record copy-down "rexec cp" "$($MEASURE times 1 -- "$REXEC" --addr "$GRPC" cp ":$FILES/up.bin" "$FILES/down.bin" | to_mbps)"
  copied "$FILES/up.bin"; copied "$FILES/down.bin"
  # The API's default digest, SHA-256, where cp's own is XXH3-128.
  record copy-up "rexec cp --digest sha256" "$($MEASURE times 1 -- "$REXEC" --addr "$GRPC" cp --digest sha256 "$FILES/copy.bin" ":$FILES/up.bin" | to_mbps)"
  record copy-down "rexec cp --digest sha256" "$($MEASURE times 1 -- "$REXEC" --addr "$GRPC" cp --digest sha256 ":$FILES/up.bin" "$FILES/down.bin" | to_mbps)"
  copied "$FILES/up.bin"; copied "$FILES/down.bin"
  record copy-up "rexec -- 'cat > f' < f" "$($MEASURE times 1 -- sh -c "exec \"\$0\" --addr $GRPC -- 'cat > $FILES/up.bin' < $FILES/copy.bin" "$REXEC" | to_mbps)"
  record copy-down "rexec -- cat f > f" "$($MEASURE times 1 -- sh -c "exec \"\$0\" --addr $GRPC -- cat $FILES/up.bin > $FILES/down.bin" "$REXEC" | to_mbps)"
  copied "$FILES/up.bin"; copied "$FILES/down.bin"
done
rm -rf "${FILES_TMPFS:-$FILES/copy.bin}"

fi

# --- (e) rexecd memory with 1,000 sessions open -----------------------------------
if wants e; then
# A fresh rexecd: the one above has held a 1 GiB legacy answer in memory.
note "(e) 1,000 open sessions"
mib() { python3 -c "import sys; print([int(sys.argv[1]) / 2**20])" "$1"; }
# rexecd caps concurrent execs (--max-concurrent, 256 by default): raise it.
LIMIT=()
"$REXECD" --help | grep -q -- --max-concurrent && LIMIT=(--max-concurrent 2000)
"$REXECD" --listen 127.0.0.1:0 "${LIMIT[@]}" >"$WORK/rexecd2.out" 2>"$WORK/rexecd2.log" &
REXECD2_PID=$!
PIDS+=("$REXECD2_PID")
wait_line "$WORK/rexecd2.out" listening
GRPC2=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$WORK/rexecd2.out")
record rss "rexecd idle" "$(mib "$($MEASURE rss "$REXECD2_PID")")"
# `sleep 60.$$`: still a minute, and a command line no one else runs.
SLEEP="sleep 60.$$"
for _ in 1 2 3; do
  "$REXEC" bench --addr "$GRPC2" --hold 1000 -- "$SLEEP" >"$WORK/hold.out" &
  HOLDER=$!
  PIDS+=("$HOLDER")
  for _ in $(seq 1200); do grep -q holding "$WORK/hold.out" && break; sleep 0.05; done
  grep -q holding "$WORK/hold.out" || { note "the holder did not open 1,000 sessions"; exit 1; }
  [[ $(pgrep -fxc "$SLEEP") -ge 1000 ]] || note "fewer than 1,000 '$SLEEP' running"
  record rss "rexecd, 1,000 sessions" "$(mib "$($MEASURE rss "$REXECD2_PID")")"
  kill "$HOLDER"
  wait "$HOLDER" || true
  # The sessions' commands are killed when the holder leaves; wait for them.
  for _ in $(seq 200); do pgrep -fx "$SLEEP" >/dev/null || break; sleep 0.05; done
done

# The table is printed on exit, also after a failure (what was measured so far).
fi
