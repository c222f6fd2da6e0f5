#!/usr/bin/env bash
# Regenerate every committed preset's pages: leaderboards/<preset>/published/ and
# leaderboards/<preset>/README.md, from its leaderboard.json, studies/ and FINDINGS.md.in (the
# hand-written findings, whose numbers are references into the board). Run it after changing a
# board, a findings template or publish itself; tests/test_published_pages.py fails while a page
# is stale or a reference does not resolve.
#
#   leaderboards/publish-all.sh                  # every leaderboards/*/leaderboard.json
#   leaderboards/publish-all.sh tiny real-smollm2
#
# Each preset is published into a scratch folder first and moved in only when publish succeeded,
# so bad input leaves the committed pages as they were, and files publish no longer writes go.
# Environment: D2O_BENCH (d2o-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
D2O_BENCH=${D2O_BENCH:-d2o-bench}
if [ $# -gt 0 ]; then presets=("$@"); else
  presets=(); for board in leaderboards/*/leaderboard.json; do presets+=("$(basename "$(dirname "$board")")"); done
fi
for preset in "${presets[@]}"; do
  dir=leaderboards/$preset
  [ -f "$dir/leaderboard.json" ] || { echo "publish-all: no $dir/leaderboard.json" >&2; exit 2; }
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  [ -f "$dir/FINDINGS.md.in" ] && cp "$dir/FINDINGS.md.in" "$scratch/"
  studies=()
  [ -d "$dir/studies" ] && studies=(--studies "$dir/studies")
  $D2O_BENCH publish "$dir/leaderboard.json" "${studies[@]}" --to "$scratch/published" --readme "$scratch/README.md" >/dev/null
  rm -rf "$dir/published"
  mv "$scratch/published" "$dir/published"
  mv "$scratch/README.md" "$dir/README.md"
  rm -rf "$scratch"
  echo "publish-all: $dir/README.md and $dir/published/"
done
