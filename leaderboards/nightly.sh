#!/usr/bin/env bash
# Nightly regression: sweep a preset, compare with the last published leaderboard, publish, and
# fail on regression.
#
#   leaderboards/nightly.sh                       # the tiny world, all methods, seeds 0,1,2
#   PRESET=paper SEEDS=0 leaderboards/nightly.sh  # on a GPU runner
#
# Environment: PRESET (tiny), METHODS (every registered training method), SEEDS (0,1,2),
# OUT (nightly/<UTC date>), BASELINE (leaderboards/$PRESET/leaderboard.json), EXTRA_SETS
# (space-separated key=value overrides), Z (2.0, the compare threshold), D2O_BENCH (d2o-bench).
# Exit: 0 all runs complete and no regression; 1 a run failed or a metric/trajectory regressed;
# 2 unusable input (e.g. no baseline entry matches: the config changed, publish a new baseline).
set -uo pipefail

PRESET=${PRESET:-tiny}
SEEDS=${SEEDS:-0,1,2}
OUT=${OUT:-nightly/$(date -u +%Y-%m-%d)}
BASELINE=${BASELINE:-leaderboards/$PRESET/leaderboard.json}
Z=${Z:-2.0}
D2O_BENCH=${D2O_BENCH:-d2o-bench}
if [ -z "${METHODS:-}" ]; then
  METHODS=$($D2O_BENCH methods | awk '$1 != "base" {print $1}' | paste -sd, -)
fi
sets=()
for pair in ${EXTRA_SETS:-}; do sets+=(--set "$pair"); done

$D2O_BENCH sweep --methods "$METHODS" --seeds "$SEEDS" --preset "$PRESET" --out "$OUT" "${sets[@]}"
sweep_status=$?
if [ ! -s "$OUT/leaderboard.json" ]; then
  echo "nightly: the sweep wrote no leaderboard (exit $sweep_status)" >&2
  exit 1
fi
$D2O_BENCH publish "$OUT/leaderboard.json" --to "$OUT/published" || exit $?
if [ -f "$BASELINE" ]; then
  $D2O_BENCH compare "$BASELINE" "$OUT/leaderboard.json" --z "$Z" --json "$OUT/verdict.json"
  compare_status=$?
else
  echo "nightly: no baseline at $BASELINE; nothing to compare against" >&2
  compare_status=0
fi
if [ "$compare_status" -ne 0 ]; then exit "$compare_status"; fi
if [ "$sweep_status" -ne 0 ]; then exit 1; fi
echo "nightly: $OUT complete, no regression against $BASELINE"
