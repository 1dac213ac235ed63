#!/usr/bin/env bash
# fleet-scale.sh - one ota-server with N devices (default 1,000,000): what a device costs the
# server in memory and on disk, what a poll costs at that size, and how long fleet queries take.
#
# Starts ota-server (release build, --dev, fresh data directory, `[devices] rollout` left at
# the development default) on 127.0.0.1 only, publishes a 1 KiB release (version 1.0.0, the
# version the devices report: polls answer "no update" after the release lookup), then:
#   register   ota-loadgen poll --register-first: all N ids preauthorized in batches of
#              1000, then one poll per device on a new TLS session (full handshake, must be
#              answered 200); server RSS (VmRSS/VmHWM) and data-dir disk usage before and
#              after -> bytes per device in memory and on disk
#   drive      in the same process, polls at RATE/s for DUR s, a new TLS session per poll
#              resumed from the device's registration session (as real devices do), request
#              k made by device k mod N -> server CPU us per poll, p50/p99/max, rate reached
#   queries    with the admin token, curl -w '%{time_total}', TRIES tries each (best, worst):
#              fleet summary, first device page, filtered pages (all match / none match /
#              deep page), anomaly feed, one device, create a dynamic group (counts members),
#              read it, create a deployment of the release to it
#   restart    SIGTERM, start again: time to the first 200 from /healthz, RSS then, and RSS
#              after a DRIVE2 s drive phase from a new ota-loadgen process (full handshakes:
#              new process, and the server's ticket keys are new)
# stdout: one line per figure ("name value unit"), then a table. stderr: progress ('#'),
# including ota-loadgen's progress line every 10 s. Everything it starts is stopped by pid
# on exit, error or Ctrl-C (never pkill).
#
# Takes (2 CPUs, N=1,000,000): identities ~2 min, registration ~10-15 min, the rest ~5 min.
# The generator holds every device's TLS configuration and session: ~5 KiB per device
# (its own RSS is printed: fleet_register_loadgen_vmrss_after).
#
# Environment:
#   N=1000000        devices (1..1000000)
#   RATE=3333        drive phase polls/s (in total)
#   DUR=60           drive phase seconds (1..3600)
#   DRIVE2=10        drive phase after the restart, seconds (1..3600)
#   TRIES=3          tries per fleet query
#   REG_CONC=64      concurrent registration polls
#   PORT=18453       BASE=/tmp/ota-bench-fleet (recreated on each run)
#   CLIENT_THREADS=1 ota-loadgen threads
#   SKIP_BUILD=1     use the release binaries as they are
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-/tmp/ota-bench-fleet}
HOST=127.0.0.1
PORT=${PORT:-18453}
N=${N:-1000000}
RATE=${RATE:-3333}
DUR=${DUR:-60}
DRIVE2=${DRIVE2:-10}
TRIES=${TRIES:-3}
REG_CONC=${REG_CONC:-64}
CLIENT_THREADS=${CLIENT_THREADS:-1}
REL="$ROOT/target/release"
HW=loadgen-board

SRV_PID=""

die()  { echo "fleet-scale: ERROR: $*" >&2; exit 1; }
info() { echo "# $*" >&2; }
emit() { printf '%s %s %s\n' "$1" "$2" "$3"; }

for v in N DUR DRIVE2 TRIES REG_CONC PORT CLIENT_THREADS; do
  case "${!v}" in ''|*[!0-9]*) die "$v must be a whole number, got '${!v}'";; esac
done
case "$RATE" in ''|*[!0-9.]*|*.*.*|.) die "RATE must be a positive number, got '$RATE'";; esac
awk -v r="$RATE" 'BEGIN {exit !(r > 0)}' || die "RATE must be > 0"
[ "$N" -ge 1 ] && [ "$N" -le 1000000 ] || die "N must be 1..1000000 (ota-loadgen's limit)"
[ "$DUR" -ge 1 ] && [ "$DUR" -le 3600 ] || die "DUR must be 1..3600 (bounded load)"
[ "$DRIVE2" -ge 1 ] && [ "$DRIVE2" -le 3600 ] || die "DRIVE2 must be 1..3600"
[ "$TRIES" -ge 1 ] && [ "$TRIES" -le 20 ] || die "TRIES must be 1..20"
[ "$REG_CONC" -ge 1 ] && [ "$REG_CONC" -le 4096 ] || die "REG_CONC must be 1..4096"
case "$BASE" in /tmp/*) ;; *) die "BASE must be under /tmp (it is deleted on each run)";; esac
for t in curl ss awk du sha256sum timeout; do command -v "$t" >/dev/null || die "$t not found (apt-get install -y curl iproute2 coreutils)"; done

# ---------------------------------------------------------------- process control
stop_pid() { # $1 pid, $2 name; returns after it is gone
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then info "$2 $pid did not stop in 30 s on TERM; KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}
LG_PID=""
cleanup() {
  stop_pid "$LG_PID" ota-loadgen; LG_PID=""
  stop_pid "$SRV_PID" ota-server; SRV_PID=""
}
trap cleanup EXIT
trap 'echo "fleet-scale: interrupted" >&2; exit 130' INT TERM

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
mem_b() { # $1 pid, $2 VmRSS|VmHWM -> bytes
  awk -v f="$2:" '$1 == f {print $2 * 1024; found = 1} END {if (!found) print 0}' "/proc/$1/status" 2>/dev/null || echo 0
}
disk_b() { du -s -B1 "$1" 2>/dev/null | awk '{print $1}'; }
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {if (n > 0 && a != "" && b != "") printf "%.0f", (b - a) / n; else print "n/a"}'; }

# ---------------------------------------------------------------- build
if [ -z "${SKIP_BUILD:-}" ]; then
  info "building release binaries (no-op when fresh)"
  (cd "$ROOT" && cargo build --release -q -p ota-server -p ota-loadgen) || die "cargo build failed"
fi
for b in ota-server ota-loadgen; do [ -x "$REL/$b" ] || die "$REL/$b missing (cargo build --release -p $b)"; done
LG="$REL/ota-loadgen"

info "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
info "load before the run: $(uptime)"
info "N=$N RATE=$RATE DUR=$DUR DRIVE2=$DRIVE2 TRIES=$TRIES REG_CONC=$REG_CONC"

# ---------------------------------------------------------------- server
port_free "$PORT" || die "port $PORT in use; set PORT"
rm -rf "$BASE"
mkdir -p "$BASE/results"
DATA="$BASE/data"
RES="$BASE/results"
URL="https://$HOST:$PORT"
T_ALL=$(date +%s)

start_server() { # $1 log name; sets SRV_PID
  "$REL/ota-server" serve --dev --data-dir "$DATA" --listen "$HOST:$PORT" >"$RES/$1.out" 2>"$RES/$1.err" &
  SRV_PID=$!
}
# Waits for /healthz to answer 200; prints the seconds since $1 (date +%s%N).
wait_ready() {
  local t0=$1 i
  for i in $(seq 1 1200); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$DATA/pki/ca.crt" "$URL/healthz" 2>/dev/null)" = 200 ]; then
      awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.3f", (b - a) / 1e9}'
      return 0
    fi
    kill -0 "$SRV_PID" 2>/dev/null || die "ota-server exited: $(tail -3 "$RES"/server*.err)"
    sleep 0.05
  done
  die "ota-server not ready in 60 s"
}

info "starting ota-server (fresh data dir $DATA)"
t0=$(date +%s%N)
start_server server
# The first start makes the development PKI, TUF keys and token: wait for the CA file first.
for i in $(seq 1 600); do [ -s "$DATA/pki/ca.crt" ] && [ -s "$DATA/admin.token" ] && break; kill -0 "$SRV_PID" 2>/dev/null || die "ota-server exited: $(tail -3 "$RES/server.err")"; sleep 0.05; done
READY1=$(wait_ready "$t0")
info "ready in $READY1 s (first start, makes keys)"
TOKEN=$(cat "$DATA/admin.token")
CA="$DATA/pki/ca.crt"
api() { curl -sS --cacert "$CA" -H "Authorization: Bearer $TOKEN" "$@"; }

info "publishing a 1 KiB release (version 1.0.0, hardware $HW)"
head -c 1024 /dev/urandom >"$BASE/tiny.bin"
SHA=$(sha256sum "$BASE/tiny.bin" | cut -c1-64)
api --fail -T "$BASE/tiny.bin" "$URL/api/v1/blobs" >"$RES/upload.json" || die "upload failed"
RELEASE=fleet-1.0.0.bin
api --fail -H 'content-type: application/json' \
  -d "{\"name\":\"$RELEASE\",\"sha256\":\"$SHA\",\"version\":\"1.0.0\",\"hardware_ids\":[\"$HW\"]}" \
  "$URL/api/v1/releases" >"$RES/release.json" || die "publish failed: $(cat "$RES/release.json")"
sleep 1
RSS0=$(mem_b "$SRV_PID" VmRSS); HWM0=$(mem_b "$SRV_PID" VmHWM); DISK0=$(disk_b "$DATA")
emit server_ready_first_start "$READY1" s
emit server_rss_start "$RSS0" B
emit server_hwm_start "$HWM0" B
emit data_dir_start "$DISK0" B

# ---------------------------------------------------------------- register + drive
fig() { awk -v k="$2" '$1 == k {print $2; exit}' "$RES/$1.txt"; }

info "ota-loadgen: identities for $N devices, register them (preauthorize, one poll each), then poll at $RATE/s for $DUR s on resumed sessions"
set +e
timeout $((2 * 3600 + DUR + 600)) "$LG" poll --register-first --server "$URL" --pki "$DATA/pki" \
  --devices "$N" --register-concurrency "$REG_CONC" --new-session --resume device \
  --rate "$RATE" --duration "$DUR" --server-pid "$SRV_PID" --data-dir "$DATA" \
  --threads "$CLIENT_THREADS" --label fleet >"$RES/fleet.txt" 2> >(tee "$RES/fleet.err" >&2) &
LG_PID=$!
wait "$LG_PID"; rc=$?
set -e
LG_PID=""
cat "$RES/fleet.txt"
[ -n "$(fig fleet fleet_register_accepted)" ] || die "ota-loadgen exited with $rc before registering (see $RES/fleet.err)"
[ "$rc" = 0 ] || info "WARNING: ota-loadgen exited with $rc (not every device accepted, or no poll answered; see $RES/fleet.err)"
ACCEPTED=$(fig fleet fleet_register_accepted)
[ "$ACCEPTED" = "$N" ] || info "WARNING: only $ACCEPTED of $N devices accepted"
RSS1=$(fig fleet fleet_register_server_vmrss_after); HWM1=$(fig fleet fleet_register_server_vmhwm_after)
DISK1=$(fig fleet fleet_register_data_dir_after)
MEM_PER=$(per "$RSS0" "$RSS1" "$N"); HWM_PER=$(per "$HWM0" "$HWM1" "$N"); DISK_PER=$(per "$DISK0" "$DISK1" "$N")
emit server_rss_per_device "$MEM_PER" B
emit server_hwm_per_device "$HWM_PER" B
emit disk_per_device "$DISK_PER" B
# After the drive: the devices' last-seen times, the store's cache and the TLS caches have
# grown with use.
RSS1D=$(fig fleet fleet_server_vmrss_after); DISK1D=$(fig fleet fleet_data_dir_after)
MEM_PER_D=$(per "$RSS0" "$RSS1D" "$N"); DISK_PER_D=$(per "$DISK0" "$DISK1D" "$N")
emit server_rss_per_device_after_drive "$MEM_PER_D" B
emit disk_per_device_after_drive "$DISK_PER_D" B

# ---------------------------------------------------------------- fleet queries
# Times one request TRIES times: emits query_<name>_best/_worst (ms) and its HTTP status.
# $1 name, $2 method, $3 path, $4 body or "" ; a body containing @TRY@ gets the try number.
QNAMES=()
declare -A QBEST QWORST
query() {
  local name=$1 method=$2 path=$3 body=$4 t out best="" worst="" code="" b ms
  for t in $(seq 1 "$TRIES"); do
    b=${body//@TRY@/$t}
    if [ -n "$b" ]; then
      out=$(api -X "$method" -H 'content-type: application/json' -d "$b" -o "$RES/q_$name.$t.json" -w '%{http_code} %{time_total}' "$URL$path") || out="000 0"
    else
      out=$(api -X "$method" -o "$RES/q_$name.$t.json" -w '%{http_code} %{time_total}' "$URL$path") || out="000 0"
    fi
    code=${out% *}
    ms=$(awk -v s="${out#* }" 'BEGIN {printf "%.1f", s * 1000}')
    case "$code" in 2??) ;; *) info "WARNING: query $name try $t: HTTP $code: $(head -c 200 "$RES/q_$name.$t.json" 2>/dev/null)";; esac
    best=$(awk -v a="$best" -v b="$ms" 'BEGIN {print (a == "" || b < a) ? b : a}')
    worst=$(awk -v a="$worst" -v b="$ms" 'BEGIN {print (a == "" || b > a) ? b : a}')
  done
  emit "query_${name}_best" "$best" ms
  emit "query_${name}_worst" "$worst" ms
  emit "query_${name}_status" "$code" http
  QNAMES+=("$name"); QBEST[$name]=$best; QWORST[$name]=$worst
}
LAST_ID=$(printf 'lg-%07d' $((N - 1)))
MID_ID=$(printf 'lg-%07d' $((N / 2)))
info "fleet queries at $N devices, $TRIES tries each"
query fleet_summary GET /api/v1/fleet/summary ""
query devices_first_page GET "/api/v1/devices?limit=100" ""
query devices_accepted_page GET "/api/v1/devices?status=accepted&limit=100" ""
query devices_pending_none GET "/api/v1/devices?status=pending&limit=100" ""
query devices_other_hw_none GET "/api/v1/devices?hardware_id=no-such-board&limit=100" ""
query devices_deep_page GET "/api/v1/devices?after=$MID_ID&limit=1000" ""
query anomalies GET "/api/v1/anomalies?limit=100" ""
query device_one GET "/api/v1/devices/$LAST_ID" ""
query group_create POST /api/v1/groups "{\"name\":\"fleet-@TRY@\",\"filter\":{\"hardware_id\":\"$HW\"}}"
query group_get GET /api/v1/groups/fleet-1 ""
query deployment_create POST /api/v1/deployments \
  "{\"release\":\"$RELEASE\",\"group\":\"fleet-@TRY@\",\"phases\":[{\"percent\":100,\"min_wait_secs\":0}],\"failure_threshold_percent\":50,\"min_devices\":1}"
MEMBERS=$(sed -n 's/.*"member_count":\([0-9]*\).*/\1/p' "$RES/q_group_create.1.json")
emit group_member_count "${MEMBERS:-n/a}" count
[ "${MEMBERS:-}" = "$ACCEPTED" ] || info "WARNING: the group counts ${MEMBERS:-?} members, $ACCEPTED devices were accepted"
# Abort the deployments again (not timed) so that the polls after the restart are like the first.
for t in $(seq 1 "$TRIES"); do
  dep=$(sed -n 's/^{"id":"\([^"]*\)".*/\1/p' "$RES/q_deployment_create.$t.json")
  [ -n "$dep" ] && api -o /dev/null -X POST "$URL/api/v1/deployments/$dep/abort" || true
done
RSS_Q=$(mem_b "$SRV_PID" VmRSS)
emit server_rss_after_queries "$RSS_Q" B

# ---------------------------------------------------------------- restart
info "restart: SIGTERM, start again"
t0=$(date +%s%N)
stop_pid "$SRV_PID" ota-server; SRV_PID=""
STOP_S=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
port_free "$PORT" || sleep 1
t0=$(date +%s%N)
start_server server2
READY2=$(wait_ready "$t0")
sleep 1
RSS2=$(mem_b "$SRV_PID" VmRSS); HWM2=$(mem_b "$SRV_PID" VmHWM)
emit server_stop "$STOP_S" s
emit server_ready_after_restart "$READY2" s
emit server_rss_after_restart "$RSS2" B
emit server_hwm_after_restart "$HWM2" B

info "drive after the restart: $RATE/s for $DRIVE2 s (new process: full handshakes)"
set +e
timeout $((DRIVE2 + 900)) "$LG" poll --server "$URL" --pki "$DATA/pki" --devices "$N" --new-session \
  --rate "$RATE" --duration "$DRIVE2" --server-pid "$SRV_PID" --threads "$CLIENT_THREADS" \
  --label refill >"$RES/refill.txt" 2> >(tee "$RES/refill.err" >&2) &
LG_PID=$!
wait "$LG_PID"; rc=$?
set -e
LG_PID=""
cat "$RES/refill.txt"
[ "$rc" = 0 ] || info "WARNING: ota-loadgen (refill) exited with $rc (see $RES/refill.err)"
RSS3=$(mem_b "$SRV_PID" VmRSS); HWM3=$(mem_b "$SRV_PID" VmHWM)
emit server_rss_after_refill "$RSS3" B
emit server_hwm_after_refill "$HWM3" B
info "done in $(( $(date +%s) - T_ALL )) s; load after: $(uptime)"

# ---------------------------------------------------------------- table
verdict() { # $1 value $2 op $3 target
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {if (v == "n/a" || v == "") {print "?"; exit} ok = (op == ">=") ? (v >= t) : (v <= t); print ok ? "met" : "MISSED"}'
}
mib() { awk -v b="$1" 'BEGIN {if (b == "" || b == "n/a") print "n/a"; else printf "%.1f", b / 1048576}'; }
D_RATE=$(fig fleet fleet_rate); D_CPU=$(fig fleet fleet_server_cpu_per_req)
D_P50=$(fig fleet fleet_latency_p50); D_P99=$(fig fleet fleet_latency_p99); D_MAX=$(fig fleet fleet_latency_max)
D_ERR=$(fig fleet fleet_errors); D_RES=$(fig fleet fleet_handshakes_resumed); D_HS=$(fig fleet fleet_handshakes)
R_RATE=$(fig refill refill_rate); R_CPU=$(fig refill refill_server_cpu_per_req); R_P99=$(fig refill refill_latency_p99)
REG_S=$(fig fleet fleet_register_total_elapsed); REG_R=$(fig fleet fleet_register_devices_per_s)
REG_E=$(fig fleet fleet_register_poll_errors_all_passes); PRE_S=$(fig fleet fleet_register_preauthorize_elapsed)
LG_RSS=$(fig fleet fleet_register_loadgen_vmrss_after); LG_RSS0=$(fig fleet fleet_register_loadgen_vmrss_before)
LG_RSS2=$(fig fleet fleet_loadgen_vmrss_after)
REG_CPU=$(fig fleet fleet_register_poll_server_cpu_per_req); D_CCPU=$(fig fleet fleet_client_cpu)
{
  echo
  echo "# ota-server with $N devices, one run, $(date -u +%FT%TZ); results in $RES"
  printf '%-52s %16s  %s\n' figure value "target / note"
  printf '%-52s %16s  %s\n' "server memory per device (RSS, B)" "$MEM_PER" "RSS $(mib "$RSS0") -> $(mib "$RSS1") MiB"
  printf '%-52s %16s  %s\n' "server memory per device (high-water mark, B)" "$HWM_PER" "HWM $(mib "$HWM0") -> $(mib "$HWM1") MiB"
  printf '%-52s %16s  %s\n' "  after the drive phase (RSS, B)" "$MEM_PER_D" "RSS -> $(mib "$RSS1D") MiB"
  printf '%-52s %16s  %s\n' "disk per device (B)" "$DISK_PER" "data dir $(mib "$DISK0") -> $(mib "$DISK1") MiB"
  printf '%-52s %16s  %s\n' "  after the drive phase (B)" "$DISK_PER_D" "data dir -> $(mib "$DISK1D") MiB"
  printf '%-52s %16s  %s\n' "registration (devices/s)" "$REG_R" "$ACCEPTED/$N accepted in $REG_S s (preauthorize $PRE_S s), $REG_E poll errors"
  printf '%-52s %16s  %s\n' "server CPU per registration poll (us)" "$REG_CPU" "full handshake + first contact"
  printf '%-52s %16s  %s\n' "drive rate reached (polls/s)" "$D_RATE" "RATE $RATE, $DUR s, $D_ERR errors, resumed $D_RES/$D_HS, client $D_CCPU cores"
  printf '%-52s %16s  %s\n' "server CPU per poll (us)" "$D_CPU" "<= 300 us: $(verdict "$D_CPU" '<=' 300)"
  printf '%-52s %16s  %s\n' "poll latency p50 / p99 / max (us)" "$D_P50/$D_P99/$D_MAX" ""
  for q in "${QNAMES[@]}"; do
    printf '%-52s %16s  %s\n' "query $q best / worst (ms)" "${QBEST[$q]}/${QWORST[$q]}" ""
  done
  printf '%-52s %16s  %s\n' "stop (SIGTERM -> exit, s)" "$STOP_S" ""
  printf '%-52s %16s  %s\n' "restart: time to ready (s)" "$READY2" "first start $READY1 s"
  printf '%-52s %16s  %s\n' "RSS after restart / after refill (MiB)" "$(mib "$RSS2")/$(mib "$RSS3")" "refill: $DRIVE2 s at $R_RATE polls/s, $R_CPU us CPU/poll (full handshakes), p99 $R_P99 us"
  printf '%-52s %16s  %s\n' "ota-loadgen RSS holding $N devices (MiB)" "$(mib "$LG_RSS")" "identities only: $(mib "$LG_RSS0") MiB; after the drive: $(mib "$LG_RSS2") MiB"
}
