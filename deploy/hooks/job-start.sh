#!/bin/sh
# reaper's job-started hook: before a CI job's first step, each port the
# job needs must bind. A server left by a job that ended is stopped (the
# output names the job that leaked it); one of a job still running is
# refused (exit 4: the hook fails the job, with the reason).
#
# The job comes from the environment the runner gives its hooks (GitHub's
# RUNNER_TRACKING_ID, GitLab's CI_JOB_ID, Jenkins' BUILD_TAG, Buildkite's
# BUILDKITE_JOB_ID). Set in the runner's environment:
#   REAPER_JOB_PORTS   the ports jobs need: 8080,5432,7000-7010
#   REAPER_POLICY      a policy file (protect more, keep a deliberate daemon)
#   REAPER_JOURNAL     a journal to keep the record in
#   REAPER             the reaper binary (default: reaper on PATH)
# docs/ci.md "Runner hooks" shows where each runner takes this script.
set -eu
set -- job start
[ -n "${REAPER_JOB_PORTS:-}" ] && set -- "$@" --port "$REAPER_JOB_PORTS"
[ -n "${REAPER_POLICY:-}" ] && set -- "$@" --policy "$REAPER_POLICY"
exec "${REAPER:-reaper}" "$@"
