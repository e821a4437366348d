#!/usr/bin/env bash
# Idle cost of mdevregd: CPU time and wake-ups per minute while nothing
# happens, on the trees built by examples/make_idle_trees.rs. Figures are in
# BENCHMARKS.md ("Idle cost").
#
# CPU time: the scheduler's run time of all its threads (/proc/PID/task/*/schedstat,
# nanoseconds; utime+stime in /proc/PID/stat count whole 10 ms ticks).
# Wake-ups: voluntary context switches of all its threads (each is a sleep
# ended by a wake-up); involuntary ones (preempted by other load) are shown
# apart.
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
cpu_ns() { cat /proc/"$pid"/task/*/schedstat | awk '{s += $1} END {printf "%d\n", s}'; }
switches() { cat /proc/"$pid"/task/*/status | awk -v k="$1" '$1 == k":" {s += $2} END {print s}'; }
c0=$(cpu_ns); v0=$(switches voluntary_ctxt_switches); n0=$(switches nonvoluntary_ctxt_switches)
sleep "$secs"
c1=$(cpu_ns); v1=$(switches voluntary_ctxt_switches); n1=$(switches nonvoluntary_ctxt_switches)
cpu_ms_per_min=$(awk -v d=$((c1 - c0)) -v s="$secs" 'BEGIN {printf "%.1f", d / 1e6 * 60 / s}')
share=$(awk -v d=$((c1 - c0)) -v s="$secs" 'BEGIN {printf "%.3f", d / 1e9 / s * 100}')
echo "tree=$tree seconds=$secs cpu_ms_per_min=$cpu_ms_per_min core_share=${share}% wakeups_per_min=$(( (v1 - v0) * 60 / secs )) preempted_per_min=$(( (n1 - n0) * 60 / secs )) load=$(cut -d' ' -f1-3 /proc/loadavg)"
