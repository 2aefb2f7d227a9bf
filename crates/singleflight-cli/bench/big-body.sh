#!/usr/bin/env bash
# Large and slow bodies through `singleflight proxy`, Varnish (malloc
# storage) and nginx (proxy_cache_lock on), side by side in one run, in
# front of the same loopback upstream (`singleflight upstream`).
#
# 1. herd: CLIENTS curl clients at once on one cold BODY_BYTES response
#    (a path never asked before, each round and contender), ROUNDS rounds,
#    contenders interleaved. Per round: responses delivered whole (status
#    200, every byte, curl exit 0), upstream requests, wall time until the
#    last client is done. Then the medians, each contender's median ratio
#    to Varnish's wall in the same round, and the proxies' peak RSS.
# 2. late: a 1 s streaming body (10 chunks, 100 ms apart, chunked); one
#    client at 0, a second at 300 ms. Per contender: upstream requests, the
#    late client's bytes, and when it was done (from the first's start).
#
# Usage: crates/singleflight-cli/bench/big-body.sh [ROUNDS]   (from the repo root)
# Installs nginx, varnish and curl with apt-get when missing.
set -euo pipefail
ROUNDS=${1:-5}
CLIENTS=${CLIENTS:-50}
BODY_BYTES=${BODY_BYTES:-52428800}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/common.sh"
build_bin
install_missing curl:curl nginx:nginx varnishd:varnish
VARNISHD=$(command -v varnishd || echo /usr/sbin/varnishd)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TMP=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  pkill -f "varnishd.*$TMP" 2>/dev/null || true
  sleep 0.3
  rm -rf "$TMP"
}
trap cleanup EXIT

UP=127.0.0.1:18391 SLOW=127.0.0.1:18392
SF=127.0.0.1:18393 SF_SLOW=127.0.0.1:18394
VA=127.0.0.1:18395 VA_SLOW=127.0.0.1:18396
NG=127.0.0.1:18397 NG_SLOW=127.0.0.1:18398

wait_up() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://$1/healthz" && return 0
    sleep 0.1
  done
  echo "big-body.sh: nothing answers on $1" >&2
  exit 1
}
"$BIN" upstream --listen $UP --delay 0 --body-bytes "$BODY_BYTES" 2>/dev/null & pids+=($!)
"$BIN" upstream --listen $SLOW --delay 0 --body-bytes 1000 --chunks 10 --chunk-interval 100ms 2>/dev/null & pids+=($!)
wait_up $UP; wait_up $SLOW
"$BIN" proxy --listen $SF --upstream http://$UP --quiet 2>/dev/null & sf_pid=$!; pids+=($sf_pid)
"$BIN" proxy --listen $SF_SLOW --upstream http://$SLOW --quiet 2>/dev/null & pids+=($!)

for name in big slow; do
  if [ $name = big ]; then listen=$VA backend=$UP; else listen=$VA_SLOW backend=$SLOW; fi
  "$VARNISHD" -F -n "$TMP/varnish-$name" -a "$listen" -b "$backend" -s malloc,256m \
    -p thread_pool_min=50 >"$TMP/varnish-$name.log" 2>&1 & pids+=($!)
done

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<EOF
user root;
worker_processes 2;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  proxy_cache_path $TMP/nginx/cache levels=1:2 keys_zone=herd:10m max_size=4g inactive=10m use_temp_path=off;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_cache herd;
  proxy_cache_lock on;
  proxy_cache_lock_timeout 120s;
  proxy_cache_lock_age 120s;
  proxy_cache_valid 200 10m;
  server { listen $NG; location / { proxy_pass http://$UP; } }
  server { listen $NG_SLOW; location / { proxy_pass http://$SLOW; } }
}
EOF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx.conf" 2>"$TMP/nginx.log" & pids+=($!)

for addr in $SF $SF_SLOW $VA $VA_SLOW $NG $NG_SLOW; do wait_up "$addr"; done

count() { curl -s "http://$1/metrics" | awk '/^upstream_requests_total/ {print int($2)}'; }
now() { date +%s.%N; }

# One herd round: prints "whole upstream_requests wall_seconds".
herd() {
  local addr=$1 path=$2 before after start end clients=()
  before=$(count $UP)
  start=$(now)
  for i in $(seq "$CLIENTS"); do
    curl -s -o /dev/null -w '%{http_code} %{size_download} %{exitcode}\n' \
      "http://$addr$path" >"$TMP/client-$i" &
    clients+=($!)
  done
  wait "${clients[@]}" || true
  end=$(now)
  after=$(count $UP)
  local whole
  whole=$(cat "$TMP"/client-* | awk -v n="$BODY_BYTES" '$1 == 200 && $2 == n && $3 == 0' | wc -l)
  rm -f "$TMP"/client-*
  echo "$whole $((after - before)) $(echo "$end - $start" | bc -l)"
}

printf '## herd: %d clients at once on one cold %d-byte body, %d rounds\n\n' "$CLIENTS" "$BODY_BYTES" "$ROUNDS"
echo "| round | contender | whole | upstream requests | wall (s) |"
echo "| ---: | --- | ---: | ---: | ---: |"
declare -A walls
for round in $(seq "$ROUNDS"); do
  for who in singleflight varnish nginx; do
    case $who in singleflight) addr=$SF ;; varnish) addr=$VA ;; nginx) addr=$NG ;; esac
    read -r whole requests wall < <(herd $addr "/big-$who-$round-$RANDOM")
    printf '| %d | %s | %d/%d | %d | %.3f |\n' "$round" "$who" "$whole" "$CLIENTS" "$requests" "$wall"
    walls[$who]+="$wall "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# Each round's wall against Varnish's in the same round, then the median
# of those ratios: a burst of load from elsewhere moves both of a round.
ratios() {
  paste -d' ' <(echo "$1" | tr ' ' '\n' | grep -v '^$') <(echo "${walls[varnish]}" | tr ' ' '\n' | grep -v '^$') |
    awk '{printf "%f ", $1 / $2}'
}
echo
echo "| contender | median wall (s) | median of per-round ratios to varnish |"
echo "| --- | ---: | ---: |"
for who in singleflight varnish nginx; do
  m=$(echo "${walls[$who]}" | median)
  r=$(ratios "${walls[$who]}" | median)
  printf '| %s | %.3f | %.2fx |\n' "$who" "$m" "$r"
done
echo
hwm() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
printf 'singleflight proxy peak RSS: %s MiB' "$(hwm $sf_pid)"
va_child=$(pgrep -f "varnishd.*$TMP/varnish-big" | tail -1 || true)
[ -n "$va_child" ] && printf '; varnish (worker) peak RSS: %s MiB' "$(hwm "$va_child")"
echo
echo

# The late client: 300 ms into a 1 s streaming body.
echo "## late: a second client 300 ms into a 1 s streaming body (10 chunks, 100 ms apart)"
echo
echo "| contender | upstream requests | late client's bytes | late client done at (s) | first client done at (s) |"
echo "| --- | ---: | ---: | ---: | ---: |"
for who in singleflight varnish nginx; do
  case $who in singleflight) addr=$SF_SLOW ;; varnish) addr=$VA_SLOW ;; nginx) addr=$NG_SLOW ;; esac
  path="/slow-$who-$RANDOM"
  before=$(count $SLOW)
  start=$(now)
  curl -s -o /dev/null -w '%{time_total}\n' "http://$addr$path" >"$TMP/first" &
  first=$!
  sleep 0.3
  late_start=$(now)
  late=$(curl -s -o /dev/null -w '%{size_download} %{time_total}' "http://$addr$path")
  wait $first
  after=$(count $SLOW)
  read -r bytes took <<<"$late"
  printf '| %s | %d | %d | %.3f | %.3f |\n' "$who" "$((after - before))" "$bytes" \
    "$(echo "$late_start - $start + $took" | bc -l)" "$(cat "$TMP/first")"
done
