#!/usr/bin/env bash
# Nightly regression: run the comparison protocol of a preset (equal-budget tuning on validation,
# the declared selection, the selected configurations on test: `d2o-bench tune`), compare with
# the last published leaderboard, publish, and fail on regression.
#
#   leaderboards/nightly.sh                       # the tiny world, all methods
#   PRESET=paper leaderboards/nightly.sh          # on a GPU runner
#
# Entries match the baseline by method, preset and config hash, so a night whose selection picks
# the same configuration as the published one is compared run for run; a night that selects a
# different configuration has no match (exit 2): look at the studies and publish a new baseline.
# Environment: PRESET (tiny), METHODS (every registered training method), OUT (nightly/<UTC
# date>; rerunning into the same OUT resumes), BASELINE (leaderboards/$PRESET/leaderboard.json),
# EXTRA_SETS (space-separated key=value overrides), Z (2.0, the compare threshold), D2O_BENCH
# (d2o-bench). SEEDS is ignored: the preset's tune.test_seeds and tune.test_world_seeds decide.
# Exit: 0 all runs complete and no regression; 1 a run failed or a metric/trajectory regressed;
# 2 unusable input (e.g. no baseline entry matches: the selection changed, publish a new baseline).
set -uo pipefail

PRESET=${PRESET:-tiny}
OUT=${OUT:-nightly/$(date -u +%Y-%m-%d)}
BASELINE=${BASELINE:-leaderboards/$PRESET/leaderboard.json}
Z=${Z:-2.0}
D2O_BENCH=${D2O_BENCH:-d2o-bench}
if [ -z "${METHODS:-}" ]; then
  METHODS=$($D2O_BENCH methods | awk '$1 != "base" {print $1}' | paste -sd, -)
fi
sets=()
for pair in ${EXTRA_SETS:-}; do sets+=(--set "$pair"); done

$D2O_BENCH tune --methods "$METHODS" --preset "$PRESET" --out "$OUT" "${sets[@]}"
sweep_status=$?
if [ ! -s "$OUT/test/leaderboard.json" ]; then
  echo "nightly: the protocol wrote no test leaderboard (exit $sweep_status)" >&2
  exit 1
fi
$D2O_BENCH publish "$OUT/test/leaderboard.json" --studies "$OUT/studies" --to "$OUT/published" || exit $?
if [ -f "$BASELINE" ]; then
  $D2O_BENCH compare "$BASELINE" "$OUT/test/leaderboard.json" --z "$Z" --json "$OUT/verdict.json"
  compare_status=$?
else
  echo "nightly: no baseline at $BASELINE; nothing to compare against" >&2
  compare_status=0
fi
if [ "$compare_status" -ne 0 ]; then exit "$compare_status"; fi
if [ "$sweep_status" -ne 0 ]; then exit 1; fi
echo "nightly: $OUT complete, no regression against $BASELINE"
