#!/bin/sh
# reaper's job-completed hook: after a CI job's last step, every process
# and container of the job that still holds a port is stopped (through a
# pidfd, after its identity is re-checked; a container through the
# engine), and the hook waits until each port binds again. Processes of
# other jobs, the runner and this hook's own ancestors are never signalled.
#
# Environment: as job-start.sh (REAPER_POLICY, REAPER_JOURNAL, REAPER);
# REAPER_JOB_END_ALL=1 also stops the job's processes that hold no port.
set -eu
set -- job end
[ -n "${REAPER_POLICY:-}" ] && set -- "$@" --policy "$REAPER_POLICY"
[ "${REAPER_JOB_END_ALL:-0}" = 1 ] && set -- "$@" --all
exec "${REAPER:-reaper}" "$@"
