#!/usr/bin/env bash
# Runs every Spin model in this directory, and each mutant, which Spin must reject.
# Builds in a temporary directory; exits non-zero if a model fails, a mutant passes,
# a search is incomplete, or spin or a C compiler is missing (exit 2: ctest reports that as
# skipped, unless BUFFERED_REQUIRE_SPIN=1, as in CI, makes it a failure).
set -u
missing=2
if [ "${BUFFERED_REQUIRE_SPIN:-0}" = 1 ]; then missing=1; fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! command -v spin >/dev/null 2>&1; then
  echo "check.sh: spin not found on PATH (Debian/Ubuntu: apt-get install spin)" >&2
  exit "$missing"
fi
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "check.sh: no C compiler ($cc) to build Spin's verifiers" >&2
  exit "$missing"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/buffered-model.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$here"/*.pml "$work"/
cd "$work" || exit 2

failed=0

# run LABEL MODEL EXPECT "SPIN_DEFINES" "CC_FLAGS" "PAN_FLAGS"
# EXPECT is "ok", or an extended regex the error report must match.
run() {
  local label=$1 model=$2 expect=$3 defines=$4 ccflags=$5 panflags=$6
  local out start end secs states
  rm -f pan pan.* ./*.trail
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  if ! out=$(spin -a $defines "$model.pml" 2>&1); then
    echo "$label: spin -a failed"; echo "$out"; failed=1; return
  fi
  # shellcheck disable=SC2086
  if ! out=$("$cc" -w -O2 $ccflags -o pan pan.c 2>&1); then
    echo "$label: compiling pan failed"; echo "$out"; failed=1; return
  fi
  # shellcheck disable=SC2086
  out=$(./pan $panflags 2>&1)
  end=$(date +%s.%N)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' <<<"$out" | head -n1)
  if grep -q 'errors: 0' <<<"$out"; then
    if grep -qE 'max search depth too small|out of memory' <<<"$out"; then
      echo "$label: FAILED: incomplete search"; echo "$out"; failed=1
    elif [ "$expect" = ok ]; then
      echo "$label: ok ($states states, ${secs} s)"
    else
      echo "$label: FAILED: not rejected ($states states, ${secs} s)"; failed=1
    fi
  elif [ "$expect" = ok ]; then
    echo "$label: FAILED"; echo "$out"
    echo "(replay: spin $defines -t -p $model.pml, after this run, in a copy of tests/model)"
    failed=1
  elif grep -qE "$expect" <<<"$out"; then
    echo "$label: rejected as expected: $(grep -m1 -E "$expect" <<<"$out" | sed 's/^pan:1: //; s/ (at depth.*//') (${secs} s)"
  else
    echo "$label: FAILED: rejected for another reason than expected ($expect)"; echo "$out"
    failed=1
  fi
}

safety="-DSAFETY -DCOLLAPSE"
run "model lane" lane ok "" "$safety" ""
run "mutant lane/NO_HEAVY_FENCE" lane 'assertion violated.*(pushing|accepted)' \
  "-DMUTANT_NO_HEAVY_FENCE" "$safety" ""

run "model parker" parker ok "" "$safety" ""
run "mutant parker/NO_REGISTRATION_WAKE" parker 'assertion violated.*stuck_full' \
  "-DMUTANT_NO_REGISTRATION_WAKE" "$safety" ""
run "mutant parker/NO_HEAVY_FENCE" parker 'assertion violated.*lost_wakeup' \
  "-DMUTANT_NO_HEAVY_FENCE" "$safety" ""
live="-DNFAIR=3 -DCOLLAPSE"
run "model parker/LIVE (<> dispatched)" parker ok "-DLIVE" "$live" "-a -f"
run "mutant parker/NO_REGISTRATION_WAKE (LIVE)" parker 'acceptance cycle' \
  "-DLIVE -DMUTANT_NO_REGISTRATION_WAKE" "$live" "-a -f"
run "mutant parker/NO_HEAVY_FENCE (LIVE)" parker 'acceptance cycle' \
  "-DLIVE -DMUTANT_NO_HEAVY_FENCE" "$live" "-a -f"

run "model flush_epochs" flush_epochs ok "" "$safety" ""
run "model flush_epochs/LIVE" flush_epochs ok "-DLIVE" "-DNFAIR=3" "-a -f"
run "mutant flush_epochs/NO_OLD_WAIT" flush_epochs 'assertion violated.*must' \
  "-DMUTANT_NO_OLD_WAIT" "$safety" ""
run "mutant flush_epochs/NO_FLIP (LIVE)" flush_epochs 'acceptance cycle' \
  "-DLIVE -DMUTANT_NO_FLIP" "-DNFAIR=3" "-a -f"

exit "$failed"
