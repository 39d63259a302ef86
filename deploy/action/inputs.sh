# Sourced by deploy/action/run.sh: the Action's inputs checked before
# anything runs, and what the action's own files say (its version, where
# its releases are). Functions only; nothing runs at source time.
#
# The action's files are the ones this script sits in (GitHub checks the
# action out at the ref a workflow `uses:`), so the version and download
# location come from them: never from `github.action_repository`, which is
# empty for `uses: ./` and not promised for composite actions.

# The action's checkout: two levels above this file.
action_root() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
}

# A boolean input: true/false, yes/no, 1/0 (any case) -> "true" or "false".
# Anything else is an error naming the input, before any signal is sent.
bool_input() {
  local name="$1" value="${2:-}"
  case "${value,,}" in
    true | yes | 1) echo true ;;
    false | no | 0 | "") echo false ;;
    *) fail "input '${name}' must be true or false (or yes/no, 1/0), got '${value}'" ;;
  esac
}

# `key = "value"` of the [workspace.package] table of the action's Cargo.toml.
workspace_package() {
  local key="$1" file
  file="$(action_root)/Cargo.toml"
  [[ -r "$file" ]] || fail "the action's own files have no Cargo.toml at ${file}: give the inputs 'version' and 'tarball-url'"
  awk -v key="$key" '
    /^\[/ { in_pkg = ($0 == "[workspace.package]") ; next }
    in_pkg && $1 == key && $2 == "=" { v = $3; gsub(/"/, "", v); print v; exit }
  ' "$file"
}

# The release version the action's files describe.
action_version() {
  local v
  v=$(workspace_package version)
  [[ -n "$v" ]] || fail "the action's Cargo.toml names no version: give the input 'version'"
  echo "$v"
}

# Where the action's releases are downloaded from: its repository's releases.
action_releases() {
  local repo
  repo=$(workspace_package repository)
  [[ -n "$repo" ]] || fail "the action's Cargo.toml names no repository: give the input 'tarball-url'"
  echo "${repo%/}/releases/download"
}

# The released binary is x86_64 only: say so on another machine rather than
# download a binary it cannot run.
require_x86_64() {
  local arch
  arch=$(uname -m)
  [[ "$arch" == x86_64 ]] ||
    fail "this runner is ${arch}: reaper's releases are built for x86_64 only. Install a reaper built for ${arch} on the runner's PATH (cargo xtask build), and this action uses it"
}

# Sets $reaper: the one on PATH (unless 'tarball-url' is given), or the
# release tarball of the input 'version' (default: the action's own), checked
# against the release's SHA256SUMS before anything in it runs. Later steps
# find it on PATH. $1: where to download (RUNNER_TEMP).
find_reaper() {
  local temp="$1" version name url base dir
  if command -v reaper >/dev/null && [[ -z "${INPUT_TARBALL_URL:-}" ]]; then
    reaper=$(command -v reaper)
    return
  fi
  require_x86_64
  version="${INPUT_VERSION:-}"
  [[ -n "$version" ]] || version=$(action_version)
  name="reaper-${version}-x86_64-linux-musl"
  url="${INPUT_TARBALL_URL:-}"
  [[ -n "$url" ]] || url="$(action_releases)/v${version}/${name}.tar.gz"
  base="${url%/*}"
  dir="$temp/reaper-action"
  mkdir -p "$dir"
  say "installing reaper ${version} from ${url}"
  fetch "$url" "$dir/${url##*/}"
  fetch "$base/SHA256SUMS" "$dir/SHA256SUMS"
  (cd "$dir" && grep -F " ${url##*/}" SHA256SUMS | sha256sum --check --strict) >&2 ||
    fail "${url##*/} does not match the release's SHA256SUMS"
  tar -xzf "$dir/${url##*/}" -C "$dir"
  reaper="$dir/${name}/reaper"
  if [[ -n "${GITHUB_PATH:-}" ]]; then echo "$dir/${name}" >>"$GITHUB_PATH"; fi
}

fetch() {
  curl --fail --silent --show-error --location --retry 3 --connect-timeout 20 -o "$2" "$1" ||
    fail "could not download $1 (see curl's message above): check the input 'version', or give 'tarball-url'"
}

# The journal reaper wrote as root (0600) belongs to the job's user
# afterwards, so later steps can read the `journal` output. Uses $run (sudo
# when the job is not root).
hand_journal() {
  local journal="$1"
  if [[ ${#run[@]} -gt 0 && -e "$journal" ]]; then
    "${run[@]}" chown "$(id -u):$(id -g)" "$journal" || say "could not hand ${journal} to $(id -un)"
  fi
}
