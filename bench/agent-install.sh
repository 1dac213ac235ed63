#!/usr/bin/env bash
# agent-install.sh - how fast ota-agent installs an image, against the physical limit and
# against the shell pipeline that does the same job without any of the agent's checks.
#
# Starts ota-server (release, --dev, fresh data directory, 127.0.0.1 only), publishes
# random images of 512 MiB, 64 MiB and 1 GiB (each for its own hardware id), issues a
# device identity and preauthorizes it, then measures (best of TRIES each):
#   agent_512        `ota-agent once` on a fresh device: poll, TUF refresh, download with
#                    streaming SHA-256 into a file slot (checkpoint fsync every 32 MiB),
#                    final fsync and hash check, bootloader marked: wall time and MB/s
#   pipeline_512     `curl | tee slot | sha256sum` of the same target, then `sync slot`
#                    (the same durability at the end, none of the checks)
#   curl_devnull     curl of the same target to /dev/null over TLS (network limit)
#   curl_openssl_dgst  curl of the same target piped to `openssl dgst -sha256`: download and
#                    verify, nothing written (what any verifying agent must do at the least)
#   dd_fsync         dd of 512 MiB to a file on the same filesystem, conv=fsync (disk limit)
# physical limit = the slower of curl_devnull and dd_fsync (an ideal agent overlaps both);
# both curls use HTTP/1.1, the agent's protocol (curl would pick HTTP/2 by ALPN, which is
# slower here: DATA frames of 16 KiB and flow control on both ends);
# the agent's peak RSS (/usr/bin/time -v) installing the 64 MiB and the 1 GiB image;
# the stripped size of the release agent and of the agent built for devices (--profile device); the CPU time of agent + server for one
# install (and of curl + server for curl >/dev/null), and the floor that CPU puts on the
# wall time when both share the machine (CPU seconds / CPUs).
#
# stdout: "name value unit" lines, then a table with the issue's targets. stderr: progress.
# Everything it starts is stopped by pid. About 1-2 minutes once built.
#
# Environment: TRIES=3, PORT=18445, BASE=/tmp/ota-bench-agent (recreated), SKIP_BUILD=1,
#              WORK_DIR (where slots are written; default $BASE: pick the disk to measure),
#              DIRECT_IO=1 (0: the agent writes slots through the page cache, [download] direct_io = false),
#              CHECKPOINT_MIB ([download] checkpoint_mib; unset: the agent's default),
#              AGENT_WRAP (a command prefix for the agent runs, for profiling, e.g.
#              AGENT_WRAP="perf record -g -o /tmp/agent.perf --")
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-/tmp/ota-bench-agent}
WORK_DIR=${WORK_DIR:-$BASE/work}
PORT=${PORT:-18445}
TRIES=${TRIES:-3}
DIRECT_IO=${DIRECT_IO:-1}
HOST=127.0.0.1
REL="$ROOT/target/release"
SERVER_PID=""

die()  { echo "agent-install: ERROR: $*" >&2; exit 1; }
info() { echo "# $*" >&2; }
emit() { printf '%s %s %s\n' "$1" "$2" "$3"; }

case "$TRIES" in ''|*[!0-9]*) die "TRIES must be a whole number";; esac
[ "$TRIES" -ge 1 ] && [ "$TRIES" -le 10 ] || die "TRIES must be 1..10"
case "$DIRECT_IO" in 0) DIRECT_IO_TOML=false;; 1) DIRECT_IO_TOML=true;; *) die "DIRECT_IO must be 0 or 1";; esac
case "$BASE" in /tmp/*) ;; *) die "BASE must be under /tmp (it is deleted on each run)";; esac
for t in curl sha256sum dd strip ss openssl; do command -v "$t" >/dev/null || die "$t not found (apt-get install -y curl coreutils binutils iproute2 openssl)"; done
[ -x /usr/bin/time ] || die "/usr/bin/time not found: apt-get install -y time"

cleanup() {
  local i
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap cleanup EXIT
trap 'echo "agent-install: interrupted" >&2; exit 130' INT TERM

if [ -z "${SKIP_BUILD:-}" ]; then
  info "building release binaries (no-op when fresh)"
  (cd "$ROOT" && cargo build --release -q -p ota-server -p ota-agent) || die "cargo build failed"
  info "building the agent for devices (--profile device: size-optimized, fat LTO; a few minutes the first time)"
  (cd "$ROOT" && cargo build --profile device -q -p ota-agent) || die "cargo build --profile device failed"
fi
for b in ota-server ota-agent; do [ -x "$REL/$b" ] || die "$REL/$b missing"; done
[ -z "$(ss -Hltn "sport = :$PORT" 2>/dev/null)" ] || die "port $PORT in use; set PORT"

info "load before the run: $(uptime)"
rm -rf "$BASE"
mkdir -p "$BASE/img" "$BASE/res" "$WORK_DIR"
RES="$BASE/res"
DATA="$BASE/server"
"$REL/ota-server" serve --dev --data-dir "$DATA" --listen "$HOST:$PORT" >"$RES/server.out" 2>"$RES/server.err" &
SERVER_PID=$!
for i in $(seq 1 300); do
  grep -q "listening on" "$RES/server.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "ota-server exited: $(tail -3 "$RES/server.err")"
  sleep 0.1
done
grep -q "listening on" "$RES/server.out" || die "ota-server did not start"
URL="https://$HOST:$PORT"
CA="$DATA/pki/ca.crt"
TOKEN=$(cat "$DATA/admin.token")
api() { curl -sS --fail --cacert "$CA" -H "Authorization: Bearer $TOKEN" "$@"; }

declare -A TARGET_URL
publish() { # $1 tag (hardware id bench-<tag>), $2 MiB
  local f="$BASE/img/$1.bin" sha
  head -c $(($2 * 1048576)) /dev/urandom >"$f"
  sha=$(sha256sum "$f" | cut -c1-64)
  api -T "$f" "$URL/api/v1/blobs" >/dev/null || die "upload of $1 failed"
  api -H 'content-type: application/json' \
    -d "{\"name\":\"img-$1-1.0.0.bin\",\"sha256\":\"$sha\",\"version\":\"1.0.0\",\"hardware_ids\":[\"bench-$1\"]}" \
    "$URL/api/v1/releases" >/dev/null || die "publish of $1 failed"
  TARGET_URL[$1]="$URL/targets/$sha.img-$1-1.0.0.bin"
  echo "$sha" >"$BASE/img/$1.sha256"
}
info "publishing 512 MiB, 64 MiB and 1 GiB images"
publish 512 512
publish 64 64
publish 1g 1024

"$REL/ota-server" device issue --data-dir "$DATA" bench-dev-1 --out "$BASE/device" >/dev/null
api -H 'content-type: application/json' -d '{"ids":["bench-dev-1"]}' "$URL/api/v1/devices/preauthorize" >/dev/null \
  || die "preauthorize failed"
curl -sS --fail --cacert "$CA" -o "$BASE/device/1.root.json" "$URL/metadata/1.root.json" || die "root metadata"

# A fresh device for image $1: config, empty data dir, boot environment booted on A.
fresh_agent() {
  local d="$WORK_DIR/agent-$1"
  rm -rf "$d"; mkdir -p "$d"
  cat >"$d/agent.toml" <<EOF
server_url = "$URL"
ca_file = "$CA"
cert_file = "$BASE/device/bench-dev-1.crt"
key_file = "$BASE/device/bench-dev-1.key"
trusted_root = "$BASE/device/1.root.json"
hardware_id = "bench-$1"
data_dir = "$d/data"
reboot_command = []

[slots]
a = "$d/slot-a"
b = "$d/slot-b"

[bootloader]
kind = "file"
path = "$d/bootenv.json"

[download]
direct_io = $DIRECT_IO_TOML
${CHECKPOINT_MIB:+checkpoint_mib = $CHECKPOINT_MIB}
EOF
  "$REL/ota-agent" --config "$d/agent.toml" simulate-boot >/dev/null 2>"$RES/simulate-$1.err" || die "simulate-boot: $(cat "$RES/simulate-$1.err")"
  AGENT_DIR=$d
}

now_ns() { date +%s%N; }
# CPU seconds (user + system) the server has used so far.
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$SERVER_PID/stat"; }
# CPU seconds of a command timed by /usr/bin/time -v into file $1.
timed_cpu() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.3f", s}' "$1"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b - a) / 1e9}'; }

# Runs one agent install of image $1; sets T (s) and RSS (KiB); checks the slot's hash.
agent_install() {
  local tag=$1 t0 t1 out
  fresh_agent "$tag"
  sync
  s0=$(server_cpu)
  t0=$(now_ns)
  ${AGENT_WRAP:-} /usr/bin/time -v -o "$RES/time-$tag.txt" "$REL/ota-agent" --config "$AGENT_DIR/agent.toml" once \
    >"$RES/agent-$tag.out" 2>"$RES/agent-$tag.err" || die "ota-agent once ($tag) failed: $(tail -3 "$RES/agent-$tag.err")"
  t1=$(now_ns)
  s1=$(server_cpu)
  CPU=$(awk -v a="$(timed_cpu "$RES/time-$tag.txt")" -v s0="$s0" -v s1="$s1" 'BEGIN {printf "%.3f", a + s1 - s0}')
  out=$(cat "$RES/agent-$tag.out")
  case "$out" in *reboot_requested*) ;; *) die "ota-agent once ($tag) did not install: $out";; esac
  T=$(secs "$t0" "$t1")
  RSS=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$RES/time-$tag.txt")
}

check_slot() { # $1 tag: the installed slot holds exactly the image
  local want got
  want=$(cat "$BASE/img/$1.sha256")
  got=$(sha256sum "$AGENT_DIR/slot-b" | cut -c1-64)
  [ "$want" = "$got" ] || die "slot of $1 holds $got, expected $want"
}

best() { printf '%s\n' "$@" | sort -g | head -1; }
MIB512=$((512 * 1048576))
mbs() { awk -v s="$1" -v b="$MIB512" 'BEGIN {printf "%.0f", b / s / 1e6}'; }

cat "$BASE/img/512.bin" "$DATA/blobs/"* >/dev/null   # page cache: measure the network path, not the server's disk
A=(); P=(); C=(); D=(); AC=(); CC=(); V=()
for i in $(seq 1 "$TRIES"); do
  agent_install 512; A+=("$T"); AC+=("$CPU"); [ "$i" = 1 ] && check_slot 512
  info "try $i: agent $T s (agent + server CPU $CPU s)"
  slot="$WORK_DIR/pipe-slot"; rm -f "$slot"; sync
  t0=$(now_ns)
  got=$(curl -sS --fail --http1.1 --cacert "$CA" "${TARGET_URL[512]}" | tee "$slot" | sha256sum | cut -c1-64)
  sync "$slot"
  t1=$(now_ns)
  [ "$got" = "$(cat "$BASE/img/512.sha256")" ] || die "pipeline hash mismatch"
  P+=("$(secs "$t0" "$t1")"); info "try $i: curl|tee|sha256sum ${P[-1]} s"
  s0=$(server_cpu)
  t0=$(now_ns)
  /usr/bin/time -v -o "$RES/time-curl.txt" curl -sS --fail --http1.1 --cacert "$CA" -o /dev/null "${TARGET_URL[512]}"
  t1=$(now_ns); C+=("$(secs "$t0" "$t1")"); s1=$(server_cpu)
  CC+=("$(awk -v a="$(timed_cpu "$RES/time-curl.txt")" -v s0="$s0" -v s1="$s1" 'BEGIN {printf "%.3f", a + s1 - s0}')")
  rm -f "$WORK_DIR/dd.bin"; sync
  t0=$(now_ns)
  dd if=/dev/zero of="$WORK_DIR/dd.bin" bs=1M count=512 conv=fsync status=none
  t1=$(now_ns); D+=("$(secs "$t0" "$t1")")
  # Download and verify, nothing written: what a verifying agent must do at the least.
  t0=$(now_ns)
  got=$(curl -sS --fail --http1.1 --cacert "$CA" "${TARGET_URL[512]}" | openssl dgst -sha256 -r | cut -c1-64)
  t1=$(now_ns); V+=("$(secs "$t0" "$t1")")
  [ "$got" = "$(cat "$BASE/img/512.sha256")" ] || die "curl | openssl dgst hash mismatch"
  info "try $i: curl >/dev/null ${C[-1]} s (curl + server CPU ${CC[-1]} s), dd conv=fsync ${D[-1]} s, curl | openssl dgst ${V[-1]} s"
done
# The one piece of work a verifying agent cannot skip and curl does not do: SHA-256 of every
# byte. Its pure compute time (OpenSSL's SHA-NI code on 1 MiB blocks, no I/O), the least
# any implementation needs.
SHA_RATE=$(openssl speed -evp sha256 -bytes 1048576 -seconds 1 2>/dev/null | awk '/^sha256/ {sub(/k$/, "", $2); print $2 * 1000}')
[ -n "$SHA_RATE" ] || die "openssl speed gave no sha256 figure"
TH=$(awk -v r="$SHA_RATE" 'BEGIN {printf "%.3f", 512 * 1048576 / r}')
rm -f "$WORK_DIR/dd.bin" "$WORK_DIR/pipe-slot"
TA=$(best "${A[@]}"); TP=$(best "${P[@]}"); TC=$(best "${C[@]}"); TD=$(best "${D[@]}")
TL=$(awk -v c="$TC" -v d="$TD" 'BEGIN {print (c > d) ? c : d}')
# CPU spent by both ends (client + server) on one install, and the floor it puts on the
# wall time when client and server share this machine's CPUs.
NCPU=$(nproc)
TAC=$(best "${AC[@]}"); TCC=$(best "${CC[@]}")
CPU_FLOOR=$(awk -v c="$TAC" -v n="$NCPU" 'BEGIN {printf "%.3f", c / n}')
# The least any agent that checks SHA-256 could take here: curl's work plus the hash, spread
# perfectly over the CPUs it shares with the server (no copies, no disk, no scheduling).
VERIFY_FLOOR=$(awk -v c="$TCC" -v h="$TH" -v n="$NCPU" 'BEGIN {printf "%.3f", (c + h) / n}')
TV=$(best "${V[@]}")
R_VERIFY=$(awk -v f="$VERIFY_FLOOR" -v l="$TL" 'BEGIN {printf "%.2f", f / l}')

agent_install 64; RSS64=$RSS; T64=$T; check_slot 64
agent_install 1g; RSS1G=$RSS; T1G=$T; check_slot 1g
rm -rf "$WORK_DIR"/agent-*

cp "$REL/ota-agent" "$BASE/ota-agent.stripped"
strip "$BASE/ota-agent.stripped"
SIZE=$(stat -c %s "$BASE/ota-agent.stripped")
# What ships to devices: the `device` profile (stripped by the profile itself).
DEV_BIN="$ROOT/target/device/ota-agent"
DEV_SIZE=$([ -x "$DEV_BIN" ] && stat -c %s "$DEV_BIN" || echo "not-built")

emit agent_install_512 "$TA" s; emit agent_install_512_rate "$(mbs "$TA")" MB/s
emit pipeline_512 "$TP" s; emit pipeline_512_rate "$(mbs "$TP")" MB/s
emit curl_devnull_512 "$TC" s; emit curl_devnull_512_rate "$(mbs "$TC")" MB/s
emit dd_fsync_512 "$TD" s; emit dd_fsync_512_rate "$(mbs "$TD")" MB/s
emit agent_rss_64mib "$RSS64" KiB; emit agent_install_64mib "$T64" s
emit agent_rss_1gib "$RSS1G" KiB; emit agent_install_1gib "$T1G" s
emit agent_stripped_size "$SIZE" B
emit agent_device_profile_size "$DEV_SIZE" B
emit agent_install_512_cpu_both_ends "$TAC" s; emit curl_devnull_512_cpu_both_ends "$TCC" s
emit agent_install_512_cpu_floor "$CPU_FLOOR" s
emit sha256_512 "$TH" s
emit verifying_agent_floor_512 "$VERIFY_FLOOR" s
emit curl_openssl_dgst_512 "$TV" s
R_LIMIT=$(awk -v a="$TA" -v l="$TL" 'BEGIN {printf "%.2f", a / l}')
R_PIPE=$(awk -v a="$TA" -v p="$TP" 'BEGIN {printf "%.2f", p / a}')
ok() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? (v >= t) : (v <= t); print ok ? "met" : "MISSED"}'; }
{
  echo
  echo "# ota-agent install, $(date -u +%FT%TZ), best of $TRIES; slots in $WORK_DIR (direct_io = $DIRECT_IO_TOML); load after: $(uptime | sed 's/.*load/load/')"
  printf '%-52s %10s  %s\n' figure value target
  printf '%-52s %10s  %s\n' "agent install 512 MiB (s)" "$TA" "$(mbs "$TA") MB/s"
  printf '%-52s %10s  %s\n' "curl | tee slot | sha256sum; sync slot (s)" "$TP" "$(mbs "$TP") MB/s"
  printf '%-52s %10s  %s\n' "physical limit: curl >/dev/null over TLS (s)" "$TC" "$(mbs "$TC") MB/s"
  printf '%-52s %10s  %s\n' "physical limit: dd 512 MiB conv=fsync (s)" "$TD" "$(mbs "$TD") MB/s"
  printf '%-52s %10s  %s\n' "agent time / physical limit" "$R_LIMIT" "<= 1.15: $(ok "$R_LIMIT" '<=' 1.15)"
  printf '%-52s %10s  %s\n' "CPU s, agent + server, one install (best)" "$TAC" "curl + server: $TCC s"
  printf '%-52s %10s  %s\n' "  its floor on $NCPU CPUs shared by both (s)" "$CPU_FLOOR" "agent time / floor: $(awk -v a="$TA" -v f="$CPU_FLOOR" 'BEGIN {printf "%.2f", a / f}')"
  printf '%-52s %10s  %s\n' "SHA-256 of 512 MiB, compute only (openssl speed, s)" "$TH" "$(mbs "$TH") MB/s"
  printf '%-52s %10s  %s\n' "least time for any SHA-256-checking agent (s)" "$VERIFY_FLOOR" "(curl + server CPU + SHA-256) / $NCPU CPUs = $R_VERIFY x the limit"
  printf '%-52s %10s  %s\n' "curl | openssl dgst -sha256, nothing written (s)" "$TV" "agent time / this: $(awk -v a="$TA" -v v="$TV" 'BEGIN {printf "%.2f", a / v}')"
  printf '%-52s %10s  %s\n' "pipeline time / agent time (speed-up)" "$R_PIPE" ">= 1.5: $(ok "$R_PIPE" '>=' 1.5)"
  printf '%-52s %10s  %s\n' "agent peak RSS, 64 MiB image (KiB)" "$RSS64" "< 16384: $(ok "$RSS64" '<=' 16383)"
  printf '%-52s %10s  %s\n' "agent peak RSS, 1 GiB image (KiB)" "$RSS1G" "< 16384: $(ok "$RSS1G" '<=' 16383)"
  printf '%-52s %10s  %s\n' "stripped release agent, speed profile (bytes)" "$SIZE" "(not what ships)"
  if [ "$DEV_SIZE" = not-built ]; then
    printf '%-52s %10s  %s\n' "agent for devices, --profile device (bytes)" "-" "not built (SKIP_BUILD)"
  else
    printf '%-52s %10s  %s\n' "agent for devices, --profile device (bytes)" "$DEV_SIZE" "< 6 MiB: $(ok "$DEV_SIZE" '<=' 6291455)"
  fi
}
