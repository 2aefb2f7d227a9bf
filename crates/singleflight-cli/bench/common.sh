# Sourced by the scripts beside it: the binary they run, and the Debian
# packages they need. Set ROOT (the repository) before sourcing.

# BIN: the release binary, built (a no-op when up to date) unless given.
build_bin() {
  if [ -z "${BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p oneflight-cli)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/singleflight
  fi
}

# install_missing COMMAND:PACKAGE ...: installs with apt-get, without
# prompting, each PACKAGE whose COMMAND is neither on the PATH nor in
# /usr/sbin.
install_missing() {
  local pair need=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" </dev/null
  fi
}
