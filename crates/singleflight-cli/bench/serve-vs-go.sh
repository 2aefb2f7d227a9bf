#!/usr/bin/env bash
# serve's /singleflight against the Go demo server (net/http with
# golang.org/x/sync/singleflight), side by side in one run: both in front of
# the same `singleflight upstream --delay 1ms`, one hot key, wrk with 256
# connections for 10 s, alternating, ROUNDS times each. Prints requests/s and
# the upstream requests each run caused (from upstream_requests_total).
#
# Usage: crates/singleflight-cli/bench/serve-vs-go.sh [ROUNDS]   (from the repo root)
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-256}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
if [ -z "${BIN:-}" ]; then
  # Build (a no-op when up to date) unless a binary is given.
  (cd "$ROOT" && cargo build --release -q -p oneflight-cli)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/singleflight
fi
GOBIN=${GOBIN:-/tmp/singleflight-go-server}
# What a fresh machine lacks: wrk, and for the Go reference golang-go and
# golang-golang-x-sync-dev (Debian's packages, GOPATH mode, no module download).
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/golang.org/x/sync/singleflight ] || need+=(golang-go golang-golang-x-sync-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" </dev/null
fi
(cd "$ROOT/crates/singleflight-bench/go/server" && GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$GOBIN" .)

UP=127.0.0.1:18181 RS=127.0.0.1:18180 GO=127.0.0.1:18190
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$BIN" upstream --listen $UP --delay 1ms 2>/dev/null & pids+=($!)
sleep 0.5
"$BIN" serve --listen $RS --upstream http://$UP/status --quiet 2>/dev/null & pids+=($!)
"$GOBIN" -listen $GO -upstream http://$UP/status -quiet 2>/dev/null & pids+=($!)
sleep 1

count() { curl -s http://$UP/metrics | awk '/^upstream_requests_total/ {print $2}'; }
run() { # name addr
  local before after rps
  before=$(count)
  rps=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "http://$2/singleflight" | awk '/Requests\/sec/ {print $2}')
  after=$(count)
  printf '%-6s %10s req/s  %6d upstream requests\n' "$1" "$rps" $((${after%.*} - ${before%.*}))
}
for _ in $(seq "$ROUNDS"); do
  run rust $RS
  run go $GO
done
