#!/usr/bin/env bash
# proxy --redis: three proxy instances on one Redis in front of one upstream
# (100 ms), against three instances without --redis, side by side.
#
# 1. herd: each round, CLIENTS clients at once spread over the three
#    instances (one `singleflight load` per instance, in parallel) on a path
#    never asked before; ROUNDS rounds, the two setups interleaved. Per round:
#    upstream requests, each instance's p50, their median.
# 2. kill: instance A leads a flight (upstream 2 s), is killed with SIGKILL;
#    a client of instance B, waiting on the same flight, is answered after
#    A's lease (5 s) expires and B runs the request itself.
#
# Usage: crates/singleflight-cli/bench/redis-herd.sh [ROUNDS]   (from the repo root)
# Installs redis-server and curl with apt-get when missing.
set -euo pipefail
ROUNDS=${1:-5}
CLIENTS=${CLIENTS:-300}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/common.sh"
build_bin
install_missing curl:curl redis-server:redis-server redis-cli:redis-tools

TMP=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  sleep 0.2
  rm -rf "$TMP"
}
trap cleanup EXIT

REDIS_PORT=18491 UP=127.0.0.1:18492 SLOW=127.0.0.1:18499
WITH=(127.0.0.1:18493 127.0.0.1:18494 127.0.0.1:18495)
WITHOUT=(127.0.0.1:18496 127.0.0.1:18497 127.0.0.1:18498)

redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" >/dev/null & pids+=($!)
"$BIN" upstream --listen $UP --delay 100ms 2>/dev/null & pids+=($!)
"$BIN" upstream --listen $SLOW --delay 2s 2>/dev/null & pids+=($!)

# Something answers on $1, and it is ours: every process we started is alive
# (one that could not bind its port has exited).
wait_up() {
  for _ in $(seq 100); do
    if curl -s -o /dev/null "http://$1/healthz"; then
      for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "redis-herd.sh: a server exited (is a port of 18491-18501 taken?)" >&2; exit 1; }
      done
      return 0
    fi
    sleep 0.1
  done
  echo "redis-herd.sh: nothing answers on $1" >&2
  exit 1
}
wait_up $UP; wait_up $SLOW
for addr in "${WITH[@]}"; do
  "$BIN" proxy --listen "$addr" --upstream http://$UP --redis redis://127.0.0.1:$REDIS_PORT --quiet 2>/dev/null & pids+=($!)
done
for addr in "${WITHOUT[@]}"; do
  "$BIN" proxy --listen "$addr" --upstream http://$UP --quiet 2>/dev/null & pids+=($!)
done
for addr in "${WITH[@]}" "${WITHOUT[@]}"; do wait_up "$addr"; done

count() { curl -s "http://$1/metrics" | awk '/^upstream_requests_total/ {print int($2)}'; }
per=$((CLIENTS / 3))

# One round on three instances: prints "upstream_requests p50_a p50_b p50_c" (ms).
herd() {
  local path=$1; shift
  local before after i loads=()
  before=$(count $UP)
  i=0
  for addr in "$@"; do
    "$BIN" load "http://$addr$path" -n $per -c $per --json >"$TMP/load-$i.json" &
    loads+=($!)
    i=$((i + 1))
  done
  wait "${loads[@]}"
  after=$(count $UP)
  printf '%d' $((after - before))
  for j in 0 1 2; do
    python3 -c 'import json,sys; print(" %.1f" % (json.load(open(sys.argv[1]))[0]["summary"]["p50_us"] / 1000), end="")' "$TMP/load-$j.json"
  done
  echo
}

printf '## herd: %d clients at once over three instances, 100 ms upstream, %d rounds\n\n' "$CLIENTS" "$ROUNDS"
echo "| round | setup | upstream requests | p50 per instance (ms) | median p50 (ms) |"
echo "| ---: | --- | ---: | --- | ---: |"
med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
with_p50s="" without_p50s=""
for round in $(seq "$ROUNDS"); do
  for setup in redis plain; do
    if [ $setup = redis ]; then set -- "${WITH[@]}"; else set -- "${WITHOUT[@]}"; fi
    read -r requests a b c < <(herd "/round-$setup-$round-$RANDOM" "$@")
    m=$(echo "$a $b $c" | med)
    printf '| %d | %s | %d | %s, %s, %s | %s |\n' "$round" "$setup" "$requests" "$a" "$b" "$c" "$m"
    if [ $setup = redis ]; then with_p50s+="$m "; else without_p50s+="$m "; fi
  done
done
w=$(echo "$with_p50s" | med) wo=$(echo "$without_p50s" | med)
echo
printf 'median p50: %s ms with --redis, %s ms without: %+.1f ms\n\n' "$w" "$wo" "$(echo "$w - $wo" | bc -l)"

# The leader killed mid-flight.
echo "## kill: the leading instance killed mid-flight (upstream 2 s, lease 5 s)"
echo
A=127.0.0.1:18500 B=127.0.0.1:18501
"$BIN" proxy --listen $A --upstream http://$SLOW --redis redis://127.0.0.1:$REDIS_PORT --quiet 2>/dev/null & a_pid=$!; pids+=($a_pid)
"$BIN" proxy --listen $B --upstream http://$SLOW --redis redis://127.0.0.1:$REDIS_PORT --quiet 2>/dev/null & pids+=($!)
wait_up $A; wait_up $B
curl -s -o /dev/null "http://$A/killed" &
lease=""
for _ in $(seq 100); do
  lease=$(redis-cli -p $REDIS_PORT --scan --pattern 'singleflight-proxy:*:lease' 2>/dev/null | head -1)
  [ -n "$lease" ] && break
  sleep 0.02
done
[ -n "$lease" ] || { echo "redis-herd.sh: instance A never took the lease" >&2; exit 1; }
start=$(date +%s.%N)
curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://$B/killed" >"$TMP/b" &
b=$!
sleep 0.2
kill -9 $a_pid
wait $b || true
wait $a_pid 2>/dev/null || true
read -r code took <"$TMP/b"
printf '| B status | B answered after (s) | target: lease 5 s + work 2 s + 1 s |\n| ---: | ---: | ---: |\n| %s | %.3f | 8.000 |\n' "$code" "$took"
