#!/usr/bin/env bash
# proxy, TLS against cleartext: 500 clients released at once on a fresh key,
# upstream answering in 100 ms, ROUNDS rounds each. Two `singleflight
# upstream --delay 100ms`, one of them serving TLS with a throwaway
# certificate (examples/test-cert.rs), each behind its own `singleflight
# proxy --quiet` (the TLS one with --upstream-ca). Each round loads the
# cleartext pair, then the TLS pair, with one `singleflight load URL -n 500
# -c 500 --json` to a path never asked before; prints the upstream requests
# each round caused and its percentiles, then the median p99 of each and
# their ratio (TLS / cleartext).
#
# Usage: crates/singleflight-cli/bench/proxy-tls-herd.sh [ROUNDS]   (from the repo root)
set -euo pipefail
ROUNDS=${1:-5}
CLIENTS=${CLIENTS:-500}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
. "$(dirname "$0")/common.sh"
build_bin
install_missing curl:curl
CERTS=$TARGET/bench/tls-herd
(cd "$ROOT" && cargo run -q -p oneflight-cli --example test-cert -- "$CERTS" >/dev/null)

UP=127.0.0.1:18381 PX=127.0.0.1:18382 UPS=127.0.0.1:18383 PXS=127.0.0.1:18384
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$BIN" upstream --listen $UP --delay 100ms 2>/dev/null & pids+=($!)
"$BIN" upstream --listen $UPS --delay 100ms --tls-cert "$CERTS/cert.pem" --tls-key "$CERTS/key.pem" 2>/dev/null & pids+=($!)
sleep 0.5
"$BIN" proxy --listen $PX --upstream http://$UP --quiet 2>/dev/null & pids+=($!)
"$BIN" proxy --listen $PXS --upstream https://$UPS --upstream-ca "$CERTS/ca.pem" --quiet 2>/dev/null & pids+=($!)
sleep 0.5

count() { curl -s --cacert "$CERTS/ca.pem" "$1/metrics" | awk '/^upstream_requests_total/ {print $2}'; }
results=$(mktemp)
echo "round  upstream      upstream_requests  ok   p50_ms  p90_ms  p99_ms  max_ms"
for round in $(seq "$ROUNDS"); do
  for pair in "cleartext http://$UP http://$PX" "tls https://$UPS http://$PXS"; do
    set -- $pair
    before=$(count "$2"); before=${before:-0}
    json=$("$BIN" load "$3/round-$round-$RANDOM" -n "$CLIENTS" -c "$CLIENTS" --json)
    after=$(count "$2")
    echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)[0]["summary"]
ms = lambda us: "%.1f" % (us / 1000)
print("%5s  %-9s  %17d  %3d  %7s %7s %7s %7s" % (sys.argv[1], sys.argv[2], int(float(sys.argv[3])), r["ok"], ms(r["p50_us"]), ms(r["p90_us"]), ms(r["p99_us"]), ms(r["max_us"])))
print("%s %s" % (sys.argv[2], r["p99_us"]), file=open(sys.argv[4], "a"))
' "$round" "$1" "$(( ${after%.*} - ${before%.*} ))" "$results"
  done
done
python3 - "$results" <<'PY'
import statistics, sys
p99 = {}
for line in open(sys.argv[1]):
    kind, us = line.split()
    p99.setdefault(kind, []).append(int(us))
clear, tls = statistics.median(p99["cleartext"]), statistics.median(p99["tls"])
print("median p99: cleartext %.1f ms, tls %.1f ms, ratio %.3f" % (clear / 1000, tls / 1000, tls / clear))
PY
rm -f "$results"
