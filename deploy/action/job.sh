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

run=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || fail "reaper needs root and there is no sudo on this runner"
  run=(sudo --preserve-env=REAPER_JOURNAL,GITHUB_STEP_SUMMARY,RUNNER_TRACKING_ID,GITHUB_RUN_ID,GITHUB_JOB)
fi

if command -v reaper >/dev/null && [[ -z "${INPUT_TARBALL_URL:-}" ]]; then
  reaper=$(command -v reaper)
else
  version="${INPUT_VERSION:?input 'version' is needed to install reaper}"
  name="reaper-${version}-x86_64-linux-musl"
  url="${INPUT_TARBALL_URL:-${GITHUB_SERVER_URL:-https://github.com}/${ACTION_REPOSITORY:?}/releases/download/v${version}/${name}.tar.gz}"
  dir="$temp/reaper-action"
  mkdir -p "$dir"
  say "installing reaper ${version} from ${url}"
  curl --fail --silent --show-error --location --retry 3 -o "$dir/${url##*/}" "$url"
  curl --fail --silent --show-error --location --retry 3 -o "$dir/SHA256SUMS" "${url%/*}/SHA256SUMS"
  (cd "$dir" && grep -F " ${url##*/}" SHA256SUMS | sha256sum --check --strict) >&2 ||
    fail "${url##*/} does not match the release's SHA256SUMS"
  tar -xzf "$dir/${url##*/}" -C "$dir"
  reaper="$dir/${name}/reaper"
fi

[[ "$mode" == job-start && -n "${INPUT_PORT:-}" ]] && args+=(--port "$INPUT_PORT")
[[ -n "${INPUT_POLICY:-}" ]] && args+=(--policy "$INPUT_POLICY")
args+=(--grace "${INPUT_GRACE:-3s}" --deadline "${INPUT_DEADLINE:-10s}")
args+=(--journal "${INPUT_JOURNAL:-$temp/reaper-journal.jsonl}")
[[ "${INPUT_DRY_RUN:-false}" == true ]] && args+=(--dry-run)

status=0
"${run[@]}" "$reaper" "${args[@]}" || status=$?
[[ -n "${GITHUB_OUTPUT:-}" ]] && {
  echo "status=${status}"
  echo "journal=${INPUT_JOURNAL:-$temp/reaper-journal.jsonl}"
} >>"$GITHUB_OUTPUT"
exit "$status"
