#!/usr/bin/env bash
# Memo hits on one hot key: `singleflight proxy --memo-ttl` (its metrics and
# histograms on, as always), nginx answering `return 200` (the floor: no
# proxying at all), and nginx's `proxy_cache` hit, side by side in one run,
# each in front of the same loopback upstream (`singleflight upstream`).
# A second `singleflight upstream` is measured too (`hyper-floor`): a hyper
# server answering from memory, what the proxy's server stack costs with no
# proxy in it.
#
# wrk -t2 -c256 for DURATION seconds per contender and round, ROUNDS rounds,
# contenders interleaved; every contender is warmed up first (its cache
# filled). Prints each round's requests/s, the medians and the ratios.
#
# Usage: crates/singleflight-cli/bench/memo-hit.sh [ROUNDS]   (from the repo root)
# Installs nginx and wrk with apt-get when missing.
set -euo pipefail
ROUNDS=${1:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-256}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/common.sh"
build_bin
install_missing curl:curl nginx:nginx wrk:wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TMP=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$TMP"
}
trap cleanup EXIT

UP=127.0.0.1:18491 SF=127.0.0.1:18492 SF_ADMIN=127.0.0.1:18493
NG_RETURN=127.0.0.1:18494 NG_CACHE=127.0.0.1:18495 HYPER=127.0.0.1:18496
PATH_HOT=/report?id=hot

wait_up() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://$1$2" && return 0
    sleep 0.1
  done
  echo "memo-hit.sh: nothing answers on $1" >&2
  exit 1
}
"$BIN" upstream --listen $UP --delay 0 2>/dev/null & pids+=($!)
"$BIN" upstream --listen $HYPER --delay 0 2>/dev/null & pids+=($!)
wait_up $UP /healthz; wait_up $HYPER /healthz
"$BIN" proxy --listen $SF --upstream http://$UP --admin $SF_ADMIN --memo-ttl 1h --quiet \
  2>/dev/null & pids+=($!)

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<EOF
user root;
worker_processes auto;
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
  proxy_cache_path $TMP/nginx/cache levels=1:2 keys_zone=hot:10m max_size=1g inactive=1h use_temp_path=off;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server { listen $NG_RETURN; location / { return 200 "ok\n"; } }
  server {
    listen $NG_CACHE;
    location / { proxy_pass http://$UP; proxy_cache hot; proxy_cache_valid 200 1h; }
  }
}
EOF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx.conf" 2>"$TMP/nginx.log" & pids+=($!)
for addr in $SF $NG_RETURN $NG_CACHE; do wait_up $addr "$PATH_HOT"; done

# Requests/s of one wrk run against $1.
rps() {
  wrk -t2 -c"$CONNECTIONS" -d"${2:-$DURATION}"s "http://$1$PATH_HOT" 2>/dev/null \
    | awk '/^Requests\/sec:/ {print $2}'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for addr in $SF $NG_RETURN $NG_CACHE $HYPER; do rps $addr 2 >/dev/null; done
upstream_before=$(curl -s "http://$UP/metrics" | awk '/^upstream_requests_total/ {print int($2)}')

names=(singleflight-memo nginx-return nginx-proxy-cache hyper-floor)
addrs=($SF $NG_RETURN $NG_CACHE $HYPER)
for round in $(seq "$ROUNDS"); do
  line="round $round:"
  for i in 0 1 2 3; do
    r=$(rps "${addrs[$i]}")
    echo "$r" >>"$TMP/${names[$i]}"
    line="$line ${names[$i]}=$r"
  done
  echo "$line   (load: $(cut -d' ' -f1 /proc/loadavg))"
done
upstream_after=$(curl -s "http://$UP/metrics" | awk '/^upstream_requests_total/ {print int($2)}')
hits=$(curl -s "http://$SF_ADMIN/metrics" | awk '/^singleflight_memo_hits_total/ {print int($2)}')

sf=$(median <"$TMP/singleflight-memo")
ret=$(median <"$TMP/nginx-return")
cache=$(median <"$TMP/nginx-proxy-cache")
hyper=$(median <"$TMP/hyper-floor")
echo
echo "median requests/s, wrk -t2 -c$CONNECTIONS, ${DURATION}s x $ROUNDS rounds:"
printf '  %-22s %10.0f\n' singleflight-memo "$sf" nginx-return "$ret" nginx-proxy-cache "$cache" \
  hyper-floor "$hyper"
awk -v s="$sf" -v r="$ret" -v c="$cache" -v h="$hyper" 'BEGIN {
  printf "  singleflight / nginx return 200:   %.2fx (target >= 0.80x)\n", s / r
  printf "  singleflight / nginx proxy_cache:  %.2fx (target >= 1.20x)\n", s / c
  printf "  hyper floor / nginx return 200:    %.2fx\n", h / r
  printf "  singleflight / hyper floor:        %.2fx\n", s / h
}'
echo "  upstream requests during the rounds: $((upstream_after - upstream_before)); singleflight memo hits: $hits"
