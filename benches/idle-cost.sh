#!/usr/bin/env bash
# Idle cost of mdevregd: CPU time and wake-ups (context switches of all its
# threads) per minute while nothing happens, on the trees built by
# examples/make_idle_trees.rs. Figures are in BENCHMARKS.md ("Idle cost").
#
#   cargo build --release --bin mdevregd --example make_idle_trees
#   target/release/examples/make_idle_trees /tmp/idle
#   benches/idle-cost.sh /tmp/idle/mdev 60
#   benches/idle-cost.sh /tmp/idle/vfio 60
set -euo pipefail
tree=$1
secs=${2:-60}
bin=${MDEVREGD:-${CARGO_TARGET_DIR:-target}/release/mdevregd}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
"$bin" --bus embedded --sysfs-root "$tree" --state-dir "$work/state" --runtime-dir "$work/run" \
    --emit none >"$work/out" 2>"$work/log" &
pid=$!
# The address is printed once the registry is served.
for _ in $(seq 1 600); do grep -q unix "$work/out" 2>/dev/null && break; sleep 0.1; done
grep -q unix "$work/out" || { echo "mdevregd did not start: $(tail -n 3 "$work/log")" >&2; exit 1; }
sleep 15 # let start-up work (idle malloc_trim included) settle before sampling
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
switches() { cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
c0=$(cpu); s0=$(switches)
sleep "$secs"
c1=$(cpu); s1=$(switches)
echo "tree=$tree seconds=$secs cpu_ms=$(( (c1 - c0) * 1000 / tick )) wakeups=$((s1 - s0)) wakeups_per_min=$(( (s1 - s0) * 60 / secs ))"
