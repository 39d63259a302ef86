#!/usr/bin/env bash
# The steps of reaper's GitHub Action (action.yml at the repository's top):
# find or install reaper, free the port with `reaper free`, and append what
# was done (`reaper report --format md`) to the job's summary.
#
# Inputs come as INPUT_* variables (action.yml maps them); the runner sets
# GITHUB_STEP_SUMMARY, RUNNER_TEMP and GITHUB_PATH. The exit status is
# reaper free's (docs/ci.md "Exit statuses"), so the job fails at this step
# with the reason when the port stays held.
#
# tests/tests/it/ship.rs runs this script against a real stale server.
set -euo pipefail

say() { echo "reaper-action: $*" >&2; }
fail() { say "$*"; exit 2; }
# shellcheck source=deploy/action/inputs.sh
source "$(dirname "${BASH_SOURCE[0]}")/inputs.sh"

# mode: job-start / job-end are `reaper job` (deploy/action/job.sh).
case "${INPUT_MODE:-free}" in
free) ;;
*) exec bash "$(dirname "${BASH_SOURCE[0]}")/job.sh" ;;
esac

port="${INPUT_PORT:-}"
[[ "$port" =~ ^[0-9]+$ ]] || fail "input 'port' must be a port number (1-65535), got '${port}'"
grace="${INPUT_GRACE:-3s}"
deadline="${INPUT_DEADLINE:-10s}"
temp="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"
summary="${GITHUB_STEP_SUMMARY:-/dev/null}"
tree=$(bool_input tree "${INPUT_TREE:-}")
dry_run=$(bool_input dry-run "${INPUT_DRY_RUN:-}")

# reaper needs root (BPF, other users' processes): sudo on hosted runners.
run=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || fail "reaper needs root and there is no sudo on this runner"
  run=(sudo --preserve-env=REAPER_JOURNAL)
fi

# 1. reaper: the one on PATH, or the action's release (inputs.sh).
find_reaper "$temp"
say "using $("$reaper" --version) at $reaper"

# 2. reaper free, with the inputs given.
journal="${INPUT_JOURNAL:-$temp/reaper-journal.jsonl}"
args=(free "$port" --grace "$grace" --deadline "$deadline" --journal "$journal")
[[ -n "${INPUT_MATCH:-}" ]] && args+=(--match "$INPUT_MATCH")
[[ -n "${INPUT_EXE:-}" ]] && args+=(--exe "$INPUT_EXE")
[[ -n "${INPUT_CMDLINE:-}" ]] && args+=(--cmdline "$INPUT_CMDLINE")
[[ -n "${INPUT_POLICY:-}" ]] && args+=(--policy "$INPUT_POLICY")
[[ "$tree" == true ]] && args+=(--tree)
[[ "$dry_run" == true ]] && args+=(--dry-run)

since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
status=0
"${run[@]}" "$reaper" "${args[@]}" || status=$?

# 3. What it did, from the journal, in the job's summary.
{
  echo "### reaper free ${port}: exit ${status}"
  echo
  "${run[@]}" "$reaper" report --journal "$journal" --port "$port" --since "$since" --format md ||
    echo "(no report: reaper report failed, see the step's log)"
  echo
} >>"$summary"
hand_journal "$journal"
[[ -n "${GITHUB_OUTPUT:-}" ]] && {
  echo "status=${status}"
  echo "journal=${journal}"
} >>"$GITHUB_OUTPUT"
exit "$status"
