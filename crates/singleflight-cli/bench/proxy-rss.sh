#!/usr/bin/env bash
# proxy memory over a hot-key run: wrk with 256 connections on one path for
# DURATION seconds (default 60) through the proxy to an upstream answering in
# 1 ms; prints the proxy's RSS every 5 s and the end-to-5 s ratio.
#
# Usage: crates/singleflight-cli/bench/proxy-rss.sh [SECONDS]   (from the repo root)
set -euo pipefail
SECONDS_TOTAL=${1:-60}
[ "$SECONDS_TOTAL" -ge 5 ] 2>/dev/null || {
  echo "proxy-rss.sh: the run is read every 5 s; give at least 5 seconds (got '$SECONDS_TOTAL')" >&2
  exit 2
}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/common.sh"
build_bin
install_missing wrk:wrk curl:curl

UP=127.0.0.1:18481 PX=127.0.0.1:18482
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$BIN" upstream --listen $UP --delay 1ms 2>/dev/null & pids+=($!)
sleep 0.5
"$BIN" proxy --listen $PX --upstream http://$UP --quiet 2>/dev/null & proxy=$!; pids+=($proxy)
sleep 0.5
rss() { awk '/^VmRSS/ {print $2}' /proc/"$proxy"/status; }
echo "idle RSS: $(rss) KiB"
wrk -t2 -c256 -d"${SECONDS_TOTAL}s" "http://$PX/hot" > /tmp/proxy-rss-wrk.txt & wrk=$!
first=
for t in $(seq 5 5 "$SECONDS_TOTAL"); do
  sleep 5
  now=$(rss)
  [ -n "$first" ] || first=$now
  echo "t=${t}s RSS: $now KiB"
done
last=$now
wait $wrk
grep -E "Requests/sec|Latency" /tmp/proxy-rss-wrk.txt
python3 -c "import sys; f, l = int(sys.argv[1]), int(sys.argv[2]); print(f'RSS end/5s: {l / f:.3f} ({(l - f) / f * 100:+.1f}%)')" "$first" "$last"
curl -s http://$UP/metrics | grep '^upstream_requests_total'
