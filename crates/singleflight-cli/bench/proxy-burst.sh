#!/usr/bin/env bash
# proxy: 500 clients released at once on a fresh key, upstream answering in
# 100 ms, ROUNDS rounds. Each round is one `singleflight load` of 500 requests
# with 500 connections to a path never asked before (/round-N); prints the
# upstream requests the round caused and its latency percentiles.
#
# Usage: crates/singleflight-cli/bench/proxy-burst.sh [ROUNDS]   (from the repo root)
set -euo pipefail
ROUNDS=${1:-5}
CLIENTS=${CLIENTS:-500}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/common.sh"
build_bin
install_missing wrk:wrk curl:curl

UP=127.0.0.1:18281 PX=127.0.0.1:18282
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$BIN" upstream --listen $UP --delay 100ms 2>/dev/null & pids+=($!)
sleep 0.5
"$BIN" proxy --listen $PX --upstream http://$UP --quiet 2>/dev/null & pids+=($!)
sleep 0.5

count() { curl -s http://$UP/metrics | awk '/^upstream_requests_total/ {print $2}'; }
echo "round  upstream_requests  ok   p50_ms  p90_ms  p99_ms  max_ms"
for round in $(seq "$ROUNDS"); do
  before=$(count); before=${before:-0}
  json=$("$BIN" load "http://$PX/round-$round-$RANDOM" -n "$CLIENTS" -c "$CLIENTS" --json)
  after=$(count)
  echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)[0]["summary"]
ms = lambda us: "%.1f" % (us / 1000)
print("%5s  %17d  %3d  %7s %7s %7s %7s" % (sys.argv[1], int(float(sys.argv[2])), r["ok"], ms(r["p50_us"]), ms(r["p90_us"]), ms(r["p99_us"]), ms(r["max_us"])))
' "$round" "$(( ${after%.*} - ${before%.*} ))"
done
