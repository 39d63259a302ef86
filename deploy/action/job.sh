#!/usr/bin/env bash
# reaper's GitHub Action in `mode: job-start` / `mode: job-end` (action.yml):
# `reaper job start` before a workflow's first step needs its ports, or
# `reaper job end` as its last step (`if: always()`: composite actions have
# no `post:`). For workflows on any runner; on self-hosted runners the
# runner's own hooks (deploy/hooks/) do the same for every job.
#
# reaper writes its Markdown summary to $GITHUB_STEP_SUMMARY itself. The
# exit status is reaper's: 0 every port binds, 3 still held, 4 refused.
set -euo pipefail

say() { echo "reaper-action: $*" >&2; }
fail() { say "$*"; exit 2; }

mode="${INPUT_MODE:-}"
case "$mode" in
job-start) args=(job start) ;;
job-end) args=(job end) ;;
*) fail "input 'mode' must be free, job-start or job-end, got '${mode}'" ;;
esac
temp="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"
# shellcheck source=deploy/action/inputs.sh
source "$(dirname "${BASH_SOURCE[0]}")/inputs.sh"
dry_run=$(bool_input dry-run "${INPUT_DRY_RUN:-}")

run=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || fail "reaper needs root and there is no sudo on this runner"
  run=(sudo --preserve-env=REAPER_JOURNAL,GITHUB_STEP_SUMMARY,RUNNER_TRACKING_ID,GITHUB_RUN_ID,GITHUB_JOB)
fi

find_reaper "$temp"

[[ "$mode" == job-start && -n "${INPUT_PORT:-}" ]] && args+=(--port "$INPUT_PORT")
[[ -n "${INPUT_POLICY:-}" ]] && args+=(--policy "$INPUT_POLICY")
args+=(--grace "${INPUT_GRACE:-3s}" --deadline "${INPUT_DEADLINE:-10s}")
args+=(--journal "${INPUT_JOURNAL:-$temp/reaper-journal.jsonl}")
[[ "$dry_run" == true ]] && args+=(--dry-run)

status=0
"${run[@]}" "$reaper" "${args[@]}" || status=$?
hand_journal "${INPUT_JOURNAL:-$temp/reaper-journal.jsonl}"
[[ -n "${GITHUB_OUTPUT:-}" ]] && {
  echo "status=${status}"
  echo "journal=${INPUT_JOURNAL:-$temp/reaper-journal.jsonl}"
} >>"$GITHUB_OUTPUT"
exit "$status"
