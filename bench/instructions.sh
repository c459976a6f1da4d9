#!/usr/bin/env bash
# Instructions per process_event on the producer's path, counted by callgrind (repeatable: it
# counts instructions, not time). Offers 1.1M and 0.1M events to a backend that is not running
# and divides the difference of the two totals by 1M. Plain and with byte bounds.
# Usage: bench/instructions.sh [build dir, default build/bench]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/bench}
if [ ! -x "$build/bench/buffered_producer_path" ]; then
  cmake --preset bench >/dev/null
  cmake --build "$build" --target buffered_producer_path >/dev/null
fi
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$build/bench/buffered_producer_path" \
    "$@" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for mode in plain sized; do
  big=$(count 1100000 $mode)
  small=$(count 100000 $mode)
  awk -v b="$big" -v s="$small" -v m="$mode" \
    'BEGIN { printf "%-6s %.1f instructions per process_event\n", m, (b - s) / 1000000 }'
done
