#!/bin/sh
# Regenerates this machine's figures in docs/perf/ with one command, from the repository root:
#
#   bench/plot.sh                 # builds (preset bench), runs buffered_bench --rounds 3, plots
#
# Writes docs/perf/bench-<cpu>.md (the benchmark's full output), docs/perf/bench-<cpu>.csv (its
# --csv data) and docs/perf/throughput-<cpu>.svg, <cpu> named from /proc/cpuinfo. Extra
# arguments go to buffered_bench (e.g. --producers 1,2,4,8,16). Environment: BUILD_DIR (default
# build/bench), ROUNDS (default 3), PYTHON (a python3 with matplotlib; Debian:
# python3-matplotlib). To redraw an SVG from saved data only:
#   python3 bench/plot.py docs/perf/bench-<cpu>.csv
# The run takes about a minute on 2 cores; run it on an otherwise idle machine.
set -eu
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build/bench}
rounds=${ROUNDS:-3}

python=""
for candidate in ${PYTHON:-} /usr/bin/python3 python3; do
  if "$candidate" -c "import matplotlib" 2>/dev/null; then python=$candidate; break; fi
done
if [ -z "$python" ]; then
  echo "bench/plot.sh: no python3 with matplotlib (Debian: apt-get install python3-matplotlib)" >&2
  exit 1
fi

cmake --preset bench -B "$build" >/dev/null
cmake --build "$build"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/bench/buffered_bench" --rounds "$rounds" --csv "$tmp/data.csv" "$@" | tee "$tmp/table.md"

cpu=$("$python" bench/plot.py --slug "$tmp/data.csv")
mkdir -p docs/perf
cp "$tmp/table.md" "docs/perf/bench-$cpu.md"
cp "$tmp/data.csv" "docs/perf/bench-$cpu.csv"
"$python" bench/plot.py "docs/perf/bench-$cpu.csv" "docs/perf/throughput-$cpu.svg"
