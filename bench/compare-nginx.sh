#!/usr/bin/env bash
# compare-nginx.sh - ota-server and nginx side by side, in one run, on this machine.
#
# Starts ota-server (release build, --dev, fresh data directory) and Debian's nginx (TLS 1.3,
# the same ECDSA P-256 server certificate as ota-server, worker_processes 2, the same
# 512 MiB file), both on 127.0.0.1 only, then measures each the same way:
#   download_1x      one 512 MiB download, curl to /dev/null, best of 3 (MB/s)
#   download_16x     16 concurrent downloads, aggregate (MB/s), best of 2
#   poll_keepalive   256 devices over mutual TLS keep-alive (ota-loadgen poll) vs nginx's
#                    1 KiB static file (ota-loadgen get, same client, 256 connections): req/s,
#                    and req/s per server core (the client shares the 2 CPUs with the server)
#   poll_newsession  a new TLS session per request with session resumption (64 concurrent):
#                    server CPU us per request (from /proc/<pid>/stat), p99 latency
# and prints each figure with the ratio ota / nginx, and the issue's target for it.
#
# stdout: one line per figure ("name value unit"), then a table. stderr: progress ('#').
# Everything it starts is stopped by pid on exit (never pkill). Whole run: about 3 minutes
# once the release binaries are built (a cold release build adds ~7 minutes).
#
# Environment:
#   DUR=10            seconds per poll measurement (1..60)
#   BIG_MIB=512       big file size
#   OTA_PORT=18443 NGINX_PORT=18444
#   BASE=/tmp/ota-bench-compare   (recreated on each run)
#   CLIENT_THREADS=1  ota-loadgen threads
#   SKIP_BUILD=1      use the release binaries as they are
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-/tmp/ota-bench-compare}
HOST=127.0.0.1
OTA_PORT=${OTA_PORT:-18443}
NGINX_PORT=${NGINX_PORT:-18444}
DUR=${DUR:-10}
BIG_MIB=${BIG_MIB:-512}
CLIENT_THREADS=${CLIENT_THREADS:-1}
BIG_BYTES=$((BIG_MIB * 1048576))
DL_MAX=120
REL="$ROOT/target/release"

OTA_PID=""
NGINX_PID=""

die()  { echo "compare-nginx: ERROR: $*" >&2; exit 1; }
info() { echo "# $*" >&2; }
emit() { printf '%s %s %s\n' "$1" "$2" "$3"; }

for v in DUR BIG_MIB OTA_PORT NGINX_PORT CLIENT_THREADS; do
  case "${!v}" in ''|*[!0-9]*) die "$v must be a whole number";; esac
done
[ "$DUR" -ge 1 ] && [ "$DUR" -le 60 ] || die "DUR must be 1..60 (bounded load)"
NGINX=$(command -v nginx 2>/dev/null || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
[ -n "$NGINX" ] || die "nginx not found: apt-get update && apt-get install -y nginx"
for t in curl openssl ss awk; do command -v "$t" >/dev/null || die "$t not found (apt-get install -y curl openssl iproute2)"; done
case "$BASE" in /tmp/*) ;; *) die "BASE must be under /tmp (it is deleted on each run)";; esac

# ---------------------------------------------------------------- process control
stop_pid() { # $1 pid, $2 name
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then info "$2 $pid did not stop on TERM; KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}
nginx_pids() { # master and workers
  [ -n "$NGINX_PID" ] || return 0
  echo "$NGINX_PID"; ps -o pid= --ppid "$NGINX_PID" 2>/dev/null | tr -d ' '
}
cleanup() {
  local kids k
  if [ -n "$NGINX_PID" ]; then
    kids=$(ps -o pid= --ppid "$NGINX_PID" 2>/dev/null || true)
    stop_pid "$NGINX_PID" nginx
    for k in $kids; do [ "$(cat /proc/"$k"/comm 2>/dev/null)" = nginx ] && kill -KILL "$k" 2>/dev/null; done
    NGINX_PID=""
  fi
  stop_pid "$OTA_PID" ota-server; OTA_PID=""
}
trap cleanup EXIT
trap 'echo "compare-nginx: interrupted" >&2; exit 130' INT TERM

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
cpu_jiffies() { # summed utime+stime of pids
  local f=() p
  for p in "$@"; do f+=("/proc/$p/stat"); done
  cat "${f[@]}" 2>/dev/null | awk '{sub(/^.*\) /, ""); s += $12 + $13} END {print s + 0}'
}

# ---------------------------------------------------------------- build and load
if [ -z "${SKIP_BUILD:-}" ]; then
  info "building release binaries (no-op when fresh)"
  (cd "$ROOT" && cargo build --release -q -p ota-server -p ota-loadgen) || die "cargo build failed"
fi
for b in ota-server ota-loadgen; do [ -x "$REL/$b" ] || die "$REL/$b missing (cargo build --release -p $b)"; done
LG="$REL/ota-loadgen"

info "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
info "load before the run: $(uptime)"
busy=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; sleep 2; awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
busy_pct=$(echo "$busy" | awk 'NR==1 {b=$1; t=$2} NR==2 {printf "%.0f", (($2-t) > 0) ? 100*($1-b)/($2-t) : 0}')
info "machine busy before the run (2 s sample, other processes): ${busy_pct}%"
emit machine_busy_before "$busy_pct" '%'
if [ "$busy_pct" -gt 10 ]; then
  info "WARNING: other processes are using the CPUs; figures will be low and noisy. Top CPU users:"
  ps -eo pid,pcpu,comm --sort=-pcpu | sed -n '2,5p' | sed 's/^/#   /' >&2
fi

# ---------------------------------------------------------------- setup
port_free "$OTA_PORT" || die "port $OTA_PORT in use; set OTA_PORT"
port_free "$NGINX_PORT" || die "port $NGINX_PORT in use; set NGINX_PORT"
rm -rf "$BASE"
mkdir -p "$BASE"/{www,nginx/logs,nginx/tmp,results}
chmod 755 "$BASE" "$BASE/www"
DATA="$BASE/ota"
RES="$BASE/results"

info "starting ota-server (fresh data dir $DATA)"
"$REL/ota-server" serve --dev --data-dir "$DATA" --listen "$HOST:$OTA_PORT" >"$RES/ota.out" 2>"$RES/ota.err" &
OTA_PID=$!
for i in $(seq 1 300); do
  grep -q "listening on" "$RES/ota.out" 2>/dev/null && break
  kill -0 "$OTA_PID" 2>/dev/null || die "ota-server exited: $(tail -3 "$RES/ota.err")"
  sleep 0.1
done
grep -q "listening on" "$RES/ota.out" || die "ota-server did not start in 30 s"
CA="$DATA/pki/ca.crt"
TOKEN=$(cat "$DATA/admin.token")
OTA="https://$HOST:$OTA_PORT"
NGX="https://$HOST:$NGINX_PORT"

info "making the $BIG_MIB MiB file and the 1 KiB JSON file"
head -c "$BIG_BYTES" /dev/urandom >"$BASE/www/big.bin"
pre='{"device_class":"ota-demo","channel":"stable","version":"1.4.2","size":536870912,"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","url":"https://127.0.0.1:8443/big.bin","sig_ed25519":"","pad":"'
suf='"}'
n=$((1024 - ${#pre} - ${#suf} - 1))
{ printf '%s' "$pre"; head -c "$n" /dev/zero | tr '\0' 'x'; printf '%s\n' "$suf"; } >"$BASE/www/small.json"
chmod 644 "$BASE/www/big.bin" "$BASE/www/small.json"
SHA=$(sha256sum "$BASE/www/big.bin" | cut -c1-64)

info "uploading it to ota-server and publishing it as a release"
curl -sS --fail --cacert "$CA" -H "Authorization: Bearer $TOKEN" -T "$BASE/www/big.bin" "$OTA/api/v1/blobs" >"$RES/upload.json" \
  || die "upload failed"
curl -sS --fail --cacert "$CA" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d "{\"name\":\"bench-1.0.0.bin\",\"sha256\":\"$SHA\",\"version\":\"1.0.0\",\"hardware_ids\":[\"loadgen-board\"]}" \
  "$OTA/api/v1/releases" >"$RES/release.json" || die "publish failed"
OTA_BIG="$OTA/targets/$SHA.bench-1.0.0.bin"
cat "$BASE/www/big.bin" "$DATA/blobs/$SHA" >/dev/null 2>&1 || true   # both copies into the page cache

info "starting nginx (2 workers, TLS 1.3, ota-server's certificate)"
user_line=""; [ "$(id -u)" = 0 ] && user_line="user nobody nogroup;"
cat >"$BASE/nginx/nginx.conf" <<EOF
# generated by compare-nginx.sh - loopback-only benchmark peer (setup of nginx-baseline.sh)
$user_line
worker_processes 2;
worker_rlimit_nofile 16384;
daemon off;
pid $BASE/nginx/nginx.pid;
error_log $BASE/nginx/logs/error.log warn;
events { worker_connections 8192; }
http {
    types { application/json json; application/octet-stream bin; }
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $BASE/nginx/tmp/body;
    proxy_temp_path $BASE/nginx/tmp/proxy;
    fastcgi_temp_path $BASE/nginx/tmp/fastcgi;
    uwsgi_temp_path $BASE/nginx/tmp/uwsgi;
    scgi_temp_path $BASE/nginx/tmp/scgi;
    ssl_protocols TLSv1.3;
    ssl_certificate $DATA/pki/server.crt;
    ssl_certificate_key $DATA/pki/server.key;
    # Resumption on, as on ota-server (tickets), for the new-session comparison.
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    # The same TLS 1.3 suite preference as ota-server (server/src/tls.rs: AES-128-GCM-SHA256
    # first, the server's order wins), so both encrypt and hash the same way.
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    server {
        listen $HOST:$NGINX_PORT ssl;
        server_name localhost;
        root $BASE/www;
        location / { }
    }
}
EOF
"$NGINX" -t -q -p "$BASE/nginx/" -c "$BASE/nginx/nginx.conf" 2>"$RES/nginx-test.log" || die "nginx config: $(cat "$RES/nginx-test.log")"
"$NGINX" -p "$BASE/nginx/" -c "$BASE/nginx/nginx.conf" >"$RES/nginx.out" 2>&1 &
NGINX_PID=$!
for i in $(seq 1 100); do
  curl -s -o /dev/null --max-time 1 --cacert "$CA" "$NGX/small.json" && break
  kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(tail -3 "$BASE/nginx/logs/error.log")"
  sleep 0.1
done
curl -sS --fail -o /dev/null --cacert "$CA" "$NGX/small.json" || die "nginx does not answer"
suite() { curl -sv -o /dev/null --cacert "$CA" "$1" 2>&1 | sed -n 's/^\* SSL connection using //p' | head -1; }
info "versions: $("$NGINX" -v 2>&1 | sed 's/.*: //'); $(curl --version | head -1 | cut -d' ' -f1-2); TLS with nginx: $(suite "$NGX/small.json"); with ota-server: $(suite "$OTA/healthz")"

# ---------------------------------------------------------------- measurements
# Sets DL_MBS (MB/s, 10^6 bytes) and DL_CORES (server cores used) for $2 streams of URL $1.
download() { # $1 url, $2 streams, $3 name, $4.. server pids
  local url=$1 streams=$2 name=$3 i pids=() bad=0 t0 t1 j0 j1 total
  shift 3
  j0=$(cpu_jiffies "$@"); t0=$(date +%s%N)
  for i in $(seq 1 "$streams"); do
    curl -sS --http1.1 --cacert "$CA" -o /dev/null --max-time "$DL_MAX" \
      -w '%{http_code} %{size_download}\n' "$url" >"$RES/$name.$i.out" 2>"$RES/$name.$i.err" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || bad=$((bad + 1)); done
  t1=$(date +%s%N); j1=$(cpu_jiffies "$@")
  total=$(cat "$RES/$name".*.out | awk '$1 == 200 {s += $2} END {printf "%.0f", s}')
  [ "$bad" = 0 ] && [ "$total" = "$((streams * BIG_BYTES))" ] || info "WARNING: $name: $bad curl failures, $total bytes of $((streams * BIG_BYTES))"
  DL_MBS=$(awk -v b="$total" -v ns=$((t1 - t0)) 'BEGIN {printf "%.0f", b / (ns / 1e9) / 1e6}')
  DL_CORES=$(awk -v j=$((j1 - j0)) -v ns=$((t1 - t0)) 'BEGIN {printf "%.2f", j / 100 / (ns / 1e9)}')
}

best_download() { # $1 url $2 streams $3 tries $4 name $5.. pids -> BEST_MBS BEST_CORES
  local url=$1 streams=$2 tries=$3 name=$4 t
  shift 4
  BEST_MBS=0; BEST_CORES=0
  for t in $(seq 1 "$tries"); do
    download "$url" "$streams" "$name.$t" "$@"
    info "$name try $t: $DL_MBS MB/s (server $DL_CORES cores)"
    if [ "$DL_MBS" -gt "$BEST_MBS" ]; then BEST_MBS=$DL_MBS; BEST_CORES=$DL_CORES; fi
  done
}

# Runs ota-loadgen with label $1; its figures go to stdout and $RES/$1.txt.
loadgen() { # $1 label, rest: ota-loadgen arguments
  local label=$1; shift
  timeout $((DUR + 120)) "$LG" "$@" --label "$label" --threads "$CLIENT_THREADS" >"$RES/$label.txt" 2>"$RES/$label.err" \
    || info "WARNING: ota-loadgen $label exited with $? (see $RES/$label.err)"
  cat "$RES/$label.txt"
}
fig() { awk -v k="$1_$2" '$1 == k {print $2}' "$RES/$1.txt"; }

T_START=$(date +%s)
mapfile -t NPIDS < <(nginx_pids)

info "one $BIG_MIB MiB download, best of 3"
best_download "$OTA_BIG" 1 3 ota_download_1x "$OTA_PID"; OTA_DL1=$BEST_MBS; OTA_DL1_C=$BEST_CORES
best_download "$NGX/big.bin" 1 3 nginx_download_1x "${NPIDS[@]}"; NGX_DL1=$BEST_MBS; NGX_DL1_C=$BEST_CORES
emit ota_download_1x "$OTA_DL1" MB/s; emit ota_download_1x_server_cores "$OTA_DL1_C" cores
emit nginx_download_1x "$NGX_DL1" MB/s; emit nginx_download_1x_server_cores "$NGX_DL1_C" cores

info "16 concurrent downloads, best of 2"
best_download "$OTA_BIG" 16 2 ota_download_16x "$OTA_PID"; OTA_DL16=$BEST_MBS; OTA_DL16_C=$BEST_CORES
best_download "$NGX/big.bin" 16 2 nginx_download_16x "${NPIDS[@]}"; NGX_DL16=$BEST_MBS; NGX_DL16_C=$BEST_CORES
emit ota_download_16x "$OTA_DL16" MB/s; emit ota_download_16x_server_cores "$OTA_DL16_C" cores
emit nginx_download_16x "$NGX_DL16" MB/s; emit nginx_download_16x_server_cores "$NGX_DL16_C" cores

info "registering 256 devices (poll once, preauthorize, poll again)"
loadgen ota_register register --server "$OTA" --pki "$DATA/pki" --devices 256 >/dev/null
[ "$(fig ota_register accepted)" = 256 ] || die "registering 256 devices failed (see $RES/ota_register.*)"

info "keep-alive: 256 devices polling (mutual TLS) vs nginx 1 KiB file on 256 connections, ${DUR}s each"
loadgen ota_poll_keepalive poll --server "$OTA" --pki "$DATA/pki" --devices 256 --duration "$DUR" --server-pid "$OTA_PID"
loadgen nginx_get_keepalive get --server "$NGX/small.json" --ca "$CA" --concurrency 256 --duration "$DUR" \
  $(printf -- '--server-pid %s ' "${NPIDS[@]}")

info "new TLS session per request with resumption, 64 concurrent, ${DUR}s each"
loadgen ota_poll_newsession poll --server "$OTA" --pki "$DATA/pki" --devices 256 --concurrency 64 \
  --new-session --resume device --duration "$DUR" --server-pid "$OTA_PID"
loadgen nginx_get_newsession get --server "$NGX/small.json" --ca "$CA" --concurrency 64 \
  --new-session --resume device --duration "$DUR" $(printf -- '--server-pid %s ' "${NPIDS[@]}")

info "measured in $(( $(date +%s) - T_START )) s; load after: $(uptime)"
grep -h "errors\|failed_" "$RES"/*_keepalive.txt "$RES"/*_newsession.txt | awk '$2 != 0 {print "# WARNING: " $0}' >&2 || true

# ---------------------------------------------------------------- table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0 && a != "") printf "%.2f", a / b; else print "n/a"}'; }
per_core() { awk -v r="$1" -v c="$2" 'BEGIN {if (c > 0) printf "%.0f", r / c; else print "n/a"}'; }
verdict() { # $1 value $2 op $3 target
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {if (v == "n/a" || v == "") {print "?"; exit} ok = (op == ">=") ? (v >= t) : (v <= t); print ok ? "met" : "MISSED"}'
}
OK_R=$(fig ota_poll_keepalive rate); NG_R=$(fig nginx_get_keepalive rate)
OK_C=$(fig ota_poll_keepalive server_cpu); NG_C=$(fig nginx_get_keepalive server_cpu)
ON_CPU=$(fig ota_poll_newsession server_cpu_per_req); NN_CPU=$(fig nginx_get_newsession server_cpu_per_req)
ON_P99=$(fig ota_poll_newsession latency_p99); NN_P99=$(fig nginx_get_newsession latency_p99)
OK_P99=$(fig ota_poll_keepalive latency_p99); NG_P99=$(fig nginx_get_keepalive latency_p99)
ON_R=$(fig ota_poll_newsession rate); NN_R=$(fig nginx_get_newsession rate)
ON_RES=$(fig ota_poll_newsession handshakes_resumed); ON_HS=$(fig ota_poll_newsession handshakes)
NN_RES=$(fig nginx_get_newsession handshakes_resumed); NN_HS=$(fig nginx_get_newsession handshakes)
OK_PC=$(per_core "$OK_R" "$OK_C"); NG_PC=$(per_core "$NG_R" "$NG_C")
R1=$(ratio "$OTA_DL1" "$NGX_DL1"); R16=$(ratio "$OTA_DL16" "$NGX_DL16")
RK=$(ratio "$OK_R" "$NG_R"); RKC=$(ratio "$OK_PC" "$NG_PC")
{
  echo
  echo "# ota-server vs nginx, one run, $(date -u +%FT%TZ); machine busy ${busy_pct}% before; results in $RES"
  printf '%-44s %12s %12s %8s  %s\n' figure ota-server nginx ota/ngx "target"
  printf '%-44s %12s %12s %8s  %s\n' "download 1 stream (MB/s)" "$OTA_DL1" "$NGX_DL1" "$R1" ">= 1.2x: $(verdict "$R1" '>=' 1.2)"
  printf '%-44s %12s %12s %8s  %s\n' "  server cores used" "$OTA_DL1_C" "$NGX_DL1_C" "" ""
  printf '%-44s %12s %12s %8s  %s\n' "download 16 streams (MB/s)" "$OTA_DL16" "$NGX_DL16" "$R16" ">= 1.05x: $(verdict "$R16" '>=' 1.05)"
  printf '%-44s %12s %12s %8s  %s\n' "  server cores used" "$OTA_DL16_C" "$NGX_DL16_C" "" ""
  printf '%-44s %12s %12s %8s  %s\n' "keep-alive req/s (256 dev. poll vs 1 KiB)" "$OK_R" "$NG_R" "$RK" ">= 1.2x: $(verdict "$RK" '>=' 1.2)"
  printf '%-44s %12s %12s %8s  %s\n' "  per server core (req/s/core)" "$OK_PC" "$NG_PC" "$RKC" ">= 1.2x: $(verdict "$RKC" '>=' 1.2)"
  printf '%-44s %12s %12s %8s  %s\n' "  server cores used" "$OK_C" "$NG_C" "" ""
  printf '%-44s %12s %12s %8s  %s\n' "  p99 latency (us)" "$OK_P99" "$NG_P99" "$(ratio "$OK_P99" "$NG_P99")" ""
  printf '%-44s %12s %12s %8s  %s\n' "new session/req: server CPU us per req" "$ON_CPU" "$NN_CPU" "$(ratio "$ON_CPU" "$NN_CPU")" "<= 300 us: $(verdict "$ON_CPU" '<=' 300)"
  printf '%-44s %12s %12s %8s  %s\n' "  req/s" "$ON_R" "$NN_R" "$(ratio "$ON_R" "$NN_R")" ""
  printf '%-44s %12s %12s %8s  %s\n' "  p99 latency (us)" "$ON_P99" "$NN_P99" "$(ratio "$ON_P99" "$NN_P99")" ""
  printf '%-44s %12s %12s %8s  %s\n' "  resumed handshakes" "$ON_RES/$ON_HS" "$NN_RES/$NN_HS" "" ""
}
