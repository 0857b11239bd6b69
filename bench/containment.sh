#!/bin/sh
# Side by side: execs/s (c=64) and warm `true` p50 of a rexecd built before
# the runner rebuild (OLD) and of this build with --containment cgroup and
# process-group. Usage: OLD=path/to/old/rexecd bench/containment.sh
set -e
NEW=${NEW:-target/release/rexecd}; OLD=${OLD:-/tmp/rexecd-old}; CLI=target/release/rexec
start() { "$@" --listen 127.0.0.1:0 2>/dev/null > /tmp/bench-$$.out & echo $! > /tmp/bench-$$.pid
  until grep -q listening /tmp/bench-$$.out; do sleep 0.05; done; sed -n 's/listening grpc=//p' /tmp/bench-$$.out; }
for round in 1 2; do
  for variant in old cgroup process-group; do
    case $variant in old) A=$(start $OLD);; *) A=$(start $NEW --containment $variant);; esac
    P=$(cat /tmp/bench-$$.pid)
    $CLI bench --addr $A -c 1 -n 200 -- true >/dev/null 2>&1 || true
    c64=$($CLI bench --addr $A -c 64 --duration 5s --json -- true)
    warm=$($CLI bench --addr $A -c 1 -n 1000 --json -- true)
    echo "round $round $variant c64_execs_per_sec=$(echo $c64 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["execs_per_sec"]))') warm_p50_ms=$(echo $warm | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_ms"]["p50"])')"
    kill $P; wait $P 2>/dev/null || true
  done
done
