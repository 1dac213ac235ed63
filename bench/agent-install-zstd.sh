#!/usr/bin/env bash
# agent-install-zstd.sh - what a release's zstd-compressed form costs and saves: publishing
# it, installing through it (ota-agent decodes it into the slot), and the agent's memory.
#
# Images: firmware-like, compressible ext4 filesystems of 64 MiB, 512 MiB and 1 GiB, filled
# near full from this machine's own files (a deterministic set: regular files under 32 MiB of
# /usr/lib and /usr/share, sorted, then shuffled with a fixed pseudo-random source, taken in
# that order until the filesystem is ~93% full; `mkfs.ext4 -d`, fixed UUID, hash seed and
# time). Without `mkfs.ext4 -d` (e2fsprogs < 1.43): a tar of such files from /usr, zero-padded
# to the size (the table says which). Made once and kept in $BASE/images (they take a minute
# or two); IMAGES_FRESH=1 makes them again.
#
# Starts ota-server (release, --dev, fresh data directory, 127.0.0.1 only); publishes each
# image with `ota publish IMAGE --zstd --zstd-level $LEVEL` (its own hardware id) and records
# the compressed size, the ratio and the publish wall time (compression in the CLI, upload of
# image and compressed form, the server's decode check), with the CPU of the CLI and of the
# server; issues a device identity and preauthorizes it; then, on fresh devices, best of TRIES:
#   zstd_512         `ota-agent once` with `[download] compressed = true`: downloads
#                    <sha>.<name>.zst and decodes it into the slot
#   plain_512        the same with `compressed = false`: downloads the image itself
# each: wall time, agent CPU (/usr/bin/time -v), server CPU (/proc/PID/stat), bytes the agent
# fetched (the `total` of its "download started" log line, checked against the image and
# compressed lengths), and the time those bytes take on a 100 Mbit/s and a 10 Mbit/s link
# (bytes * 8 / rate: an ESTIMATE of the link-bound install time; transfer only, no CPU, no
# disk; not measured). The slot is checked with sha256sum after every install.
# Measured on a slow link (LINK_MBIT, default 100; needs root and tc): the 64 MiB image
# installed compressed and plain, once each, with loopback shaped by a tc token-bucket
# filter for the two installs only (every loopback user on the machine is slowed meanwhile;
# the filter is removed at exit, also on failure).
# Then the agent's peak RSS installing the 64 MiB and the 1 GiB image compressed: it must not
# grow with the image. Budget: the plain install's (< 16384 KiB, agent-install.sh) plus the
# frames' window, which the decoder must hold (4 MiB at level 9; read from the published form
# with `zstd -lv`).
#
# stdout: "name value unit" lines, then a readable table. stderr: progress.
# Everything it starts is stopped by pid. About 1 minute once built with the images cached
# (most of it publishing: the CLI compresses 1.6 GiB at level 9 on one core); about 1 more
# to make the images the first time.
#
# Environment: LEVEL=9 (zstd level for `ota publish --zstd-level`, 1..19), TRIES=3 (1..10),
#              PORT=18446, BASE=/tmp/ota-bench-zstd (recreated on each run except
#              $BASE/images, the image cache), IMAGES_FRESH=1 (make the images again),
#              LINK_MBIT=100 (0: skip the shaped-link installs below),
#              SKIP_BUILD=1 (skip `cargo build --release`; default 0: build, a no-op when
#              fresh), AGENT_WRAP (a command prefix for the agent runs, for profiling, e.g.
#              AGENT_WRAP="perf record -g -o /tmp/agent.perf --")
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-/tmp/ota-bench-zstd}
PORT=${PORT:-18446}
TRIES=${TRIES:-3}
LEVEL=${LEVEL:-9}
LINK_MBIT=${LINK_MBIT:-100}
SKIP_BUILD=${SKIP_BUILD:-0}
IMAGES_FRESH=${IMAGES_FRESH:-0}
HOST=127.0.0.1
REL="$ROOT/target/release"
SERVER_PID=""
CACHE="$BASE/images"
WORK_DIR="$BASE/work"
# KiB, exclusive: the plain install's budget (agent-install.sh), plus the decoder's window,
# which the publisher chooses (the level; at most 8 MiB) and which must be held in memory
# whatever the image size. Set from the published form's window below.
RSS_PLAIN_BUDGET=16384

die()  { echo "agent-install-zstd: ERROR: $*" >&2; exit 1; }
info() { echo "# $*" >&2; }
emit() { printf '%s %s %s\n' "$1" "$2" "$3"; }

case "$TRIES" in ''|*[!0-9]*) die "TRIES must be a whole number";; esac
if [ "$TRIES" -lt 1 ] || [ "$TRIES" -gt 10 ]; then die "TRIES must be 1..10"; fi
case "$LEVEL" in ''|*[!0-9]*) die "LEVEL must be a whole number";; esac
if [ "$LEVEL" -lt 1 ] || [ "$LEVEL" -gt 19 ]; then die "LEVEL must be 1..19"; fi
case "$LINK_MBIT" in ''|*[!0-9]*) die "LINK_MBIT must be a whole number (0: skip)";; esac
case "$SKIP_BUILD" in 0|1) ;; *) die "SKIP_BUILD must be 0 or 1";; esac
case "$IMAGES_FRESH" in 0|1) ;; *) die "IMAGES_FRESH must be 0 or 1";; esac
case "$BASE" in /tmp/?*) ;; *) die "BASE must be under /tmp (it is deleted on each run)";; esac
for t in curl sha256sum ss jq tar shuf openssl truncate; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install -y curl coreutils iproute2 jq tar openssl)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time not found: apt-get install -y time"

SHAPED=0
unshape() { [ "$SHAPED" = 0 ] || tc qdisc del dev lo root 2>/dev/null || true; SHAPED=0; }
cleanup() {
  local i
  unshape
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap cleanup EXIT
trap 'echo "agent-install-zstd: interrupted" >&2; exit 130' INT TERM

if [ "$SKIP_BUILD" = 0 ]; then
  info "building release binaries (no-op when fresh; several minutes the first time)"
  (cd "$ROOT" && cargo build --release -q -p ota-server -p ota-agent -p ota-cli) || die "cargo build failed"
fi
for b in ota-server ota-agent ota; do [ -x "$REL/$b" ] || die "$REL/$b missing (run with SKIP_BUILD=0)"; done
[ -z "$(ss -Hltn "sport = :$PORT" 2>/dev/null)" ] || die "port $PORT in use; set PORT"

info "load before the run: $(uptime)"
# Recreate BASE, keeping only the image cache.
mkdir -p "$BASE"
find "$BASE" -mindepth 1 -maxdepth 1 ! -name images -exec rm -rf {} +
[ "$IMAGES_FRESH" = 0 ] || rm -rf "$CACHE"
mkdir -p "$CACHE" "$BASE/res" "$BASE/tmp" "$WORK_DIR"
RES="$BASE/res"

# ---------------------------------------------------------------------------------------
# Images

# mkfs.ext4 -d (e2fsprogs >= 1.43) works here: try it on an empty directory.
IMAGE_KIND=tar
if command -v mkfs.ext4 >/dev/null && command -v dumpe2fs >/dev/null; then
  mkdir -p "$BASE/tmp/probe"
  if mkfs.ext4 -q -F -d "$BASE/tmp/probe" "$BASE/tmp/probe.img" 4M >/dev/null 2>&1; then IMAGE_KIND=ext4; fi
  rm -rf "$BASE/tmp/probe" "$BASE/tmp/probe.img"
fi
if [ "$IMAGE_KIND" = ext4 ]; then
  IMAGE_DESC="ext4 (mkfs.ext4 -d) filled from /usr/lib + /usr/share"
else
  IMAGE_DESC="tar of /usr files zero-padded to size (mkfs.ext4 -d unavailable: install e2fsprogs >= 1.43 for ext4 images)"
  info "WARNING: mkfs.ext4 -d is unavailable; falling back to $IMAGE_DESC"
fi

# Candidate files, null-delimited "size path": sorted by path, one name per inode (the
# first; hard links such as git-core's would count twice in the budget and once on disk),
# then shuffled with a fixed pseudo-random stream (AES-CTR of zeros) so that every size
# gets the same deterministic mix of binaries, libraries and data.
fixed_random() { openssl enc -aes-128-ctr -nosalt -K 00000000000000000000000000000000 -iv 00000000000000000000000000000000 -in /dev/zero 2>/dev/null; }
candidates() { # $@ source directories
  { find "$@" -xdev -type f -readable -size -32M -printf '%p\t%s\t%D:%i\0' 2>/dev/null || true; } \
    | LC_ALL=C sort -z \
    | mawk 'BEGIN {RS = "\0"; ORS = "\0"; FS = "\t"} NF == 3 && !($3 in seen) {seen[$3] = 1; print $2 " " $1}' \
    | shuf -z --random-source=<(fixed_random)
}
# Reads candidates on stdin; writes the paths (relative to /, null-delimited) whose cost
# fits in $1 bytes; prints "files dirs data_bytes". Costs: ext4 counts each file's 4 KiB
# blocks plus its inode (256 B) and each new directory's block and inode; tar counts a
# 512 B header and the data rounded up to 512 B.
select_files() { # $1 budget bytes, $2 kind, $3 out list
  mawk -v budget="$1" -v kind="$2" -v out="$3" 'BEGIN {RS = "\0"; ORS = "\0"; used = 0}
    {
      sp = index($0, " "); size = substr($0, 1, sp - 1) + 0; path = substr($0, sp + 1); sub(/^\/+/, "", path)
      if (kind == "ext4") {
        cost = int((size + 4095) / 4096) * 4096 + 256
        n = split(path, part, "/"); d = ""; newdirs = ""
        for (i = 1; i < n; i++) {
          d = (d == "") ? part[i] : d "/" part[i]
          if (!(d in seen)) { cost += 4096 + 256; newdirs = newdirs "\n" d }
        }
      } else {
        cost = 512 + int((size + 511) / 512) * 512
      }
      if (used + cost > budget) next
      used += cost; files++; data += size
      if (kind == "ext4") {
        m = split(newdirs, nd, "\n")
        for (i = 2; i <= m; i++) { seen[nd[i]] = 1; dirs++ }
      }
      print path > out
    }
    END {printf "%d %d %d\n", files, dirs, data}'
}
# ext4's default journal for a filesystem of $1 bytes in 4 KiB blocks (ext2fs_default_journal_size).
journal_bytes() {
  local blocks=$(($1 / 4096))
  if [ "$blocks" -lt 32768 ]; then echo $((4 << 20))
  elif [ "$blocks" -lt 262144 ]; then echo $((16 << 20))
  elif [ "$blocks" -lt 524288 ]; then echo $((32 << 20))
  else echo $((64 << 20)); fi
}

# Makes $CACHE/$1.img of $2 MiB unless cached; writes $1.sha256 and $1.info beside it.
make_image() {
  local tag=$1 mib=$2 size img tmp list stage pct budget sel files dirs data blocks free fill
  size=$(($2 * 1048576))
  img="$CACHE/$tag.img"
  if [ -s "$img" ] && [ -s "$CACHE/$tag.sha256" ] && [ -s "$CACHE/$tag.info" ] \
     && [ "$(stat -c %s "$img")" = "$size" ] && grep -q "^kind $IMAGE_KIND$" "$CACHE/$tag.info"; then
    info "image $tag: cached ($img)"
    return 0
  fi
  info "image $tag: making $mib MiB ($IMAGE_KIND); kept in $CACHE for later runs"
  rm -f "$img" "$CACHE/$tag.sha256" "$CACHE/$tag.info"
  tmp="$CACHE/$tag.img.part"
  list="$BASE/tmp/$tag.list"
  stage="$BASE/tmp/stage-$tag"
  if [ "$IMAGE_KIND" = ext4 ]; then
    # Aim at 93% of what the journal leaves; if the estimate was short (extent blocks,
    # inode table rounding), take 3% less and try again.
    for pct in 93 90 87 84; do
      budget=$(( (size - $(journal_bytes "$size")) * pct / 100 ))
      sel=$(candidates /usr/lib /usr/share | select_files "$budget" ext4 "$list")
      read -r files dirs data <<<"$sel"
      rm -rf "$stage"; mkdir -p "$stage"
      tar -C / --null --no-unquote --no-recursion -T "$list" -cf - | tar -C "$stage" -xf - \
        || die "copying the files for image $tag failed"
      rm -f "$tmp"
      if E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -m 0 -N $((files + dirs + 256)) \
           -U 6f746162-656e-4368-8000-000000000000 -E hash_seed=6f746162-656e-4368-8000-000000000001 \
           -L ota-bench -d "$stage" "$tmp" "${mib}M" >"$RES/mkfs-$tag.out" 2>&1; then
        break
      fi
      info "image $tag: mkfs.ext4 -d at $pct% failed ($(tail -1 "$RES/mkfs-$tag.out")); trying with fewer files"
      rm -f "$tmp"
    done
    rm -rf "$stage"
    [ -s "$tmp" ] || die "mkfs.ext4 -d could not make image $tag: $(tail -3 "$RES/mkfs-$tag.out")"
    blocks=$(dumpe2fs -h "$tmp" 2>/dev/null | awk -F: '/^Block count/ {gsub(/ /, "", $2); print $2}')
    free=$(dumpe2fs -h "$tmp" 2>/dev/null | awk -F: '/^Free blocks/ {gsub(/ /, "", $2); print $2}')
    fill=$(awk -v b="$blocks" -v f="$free" 'BEGIN {printf "%.1f", 100 * (b - f) / b}')
  else
    budget=$((size * 95 / 100))
    sel=$(candidates /usr | select_files "$budget" tar "$list")
    read -r files dirs data <<<"$sel"
    rm -f "$tmp"
    tar -C / --null --no-unquote --no-recursion -T "$list" -cf "$tmp" || die "tar for image $tag failed"
    [ "$(stat -c %s "$tmp")" -le "$size" ] || die "tar for image $tag is larger than $mib MiB"
    fill=$(awk -v t="$(stat -c %s "$tmp")" -v s="$size" 'BEGIN {printf "%.1f", 100 * t / s}')
    truncate -s "$size" "$tmp"
  fi
  rm -f "$list"
  sha256sum "$tmp" | cut -c1-64 >"$CACHE/$tag.sha256"
  printf 'kind %s\nfiles %s\ndata_bytes %s\nfill_percent %s\n' "$IMAGE_KIND" "$files" "$data" "$fill" >"$CACHE/$tag.info"
  mv "$tmp" "$img"
  info "image $tag: $files files, $((data / 1048576)) MiB of file data, $fill% of the image used"
}
info_of() { awk -v k="$2" '$1 == k {print $2}' "$CACHE/$1.info"; }

make_image 64 64
make_image 512 512
make_image 1g 1024

# ---------------------------------------------------------------------------------------
# Server, releases, device

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

now_ns() { date +%s%N; }
# CPU seconds (user + system) the server has used so far.
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$SERVER_PID/stat"; }
# CPU seconds of a command timed by /usr/bin/time -v into file $1.
timed_cpu() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.3f", s}' "$1"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b - a) / 1e9}'; }
sub_s() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }

declare -A LEN ZLEN ZSHA PUB_T PUB_CLI PUB_SRV WINDOW FRAMES
publish() { # $1 tag: image $CACHE/$1.img as img-$1-1.0.0.bin for hardware id bench-$1
  local tag=$1 t0 t1 s0 s1 j
  info "publishing image $tag with --zstd --zstd-level $LEVEL"
  sync
  s0=$(server_cpu); t0=$(now_ns)
  OTA_SERVER="$URL" OTA_CA="$CA" OTA_TOKEN_FILE="$DATA/admin.token" TMPDIR="$BASE/tmp" \
    /usr/bin/time -v -o "$RES/time-publish-$tag.txt" "$REL/ota" --json publish "$CACHE/$tag.img" \
      --name "img-$tag-1.0.0.bin" --version 1.0.0 --hardware-id "bench-$tag" --zstd --zstd-level "$LEVEL" \
      >"$RES/publish-$tag.json" 2>"$RES/publish-$tag.err" || die "ota publish $tag failed: $(tail -3 "$RES/publish-$tag.err")"
  t1=$(now_ns); s1=$(server_cpu)
  j="$RES/publish-$tag.json"
  [ "$(jq -r .sha256 "$j")" = "$(cat "$CACHE/$tag.sha256")" ] || die "ota publish $tag: the server stored another image"
  LEN[$tag]=$(jq -r .length "$j")
  ZLEN[$tag]=$(jq -r .zstd.length "$j")
  ZSHA[$tag]=$(jq -r .zstd.sha256 "$j")
  case "${ZLEN[$tag]}" in ''|null|*[!0-9]*) die "ota publish $tag: no zstd form in its answer: $(head -c 300 "$j")";; esac
  PUB_T[$tag]=$(secs "$t0" "$t1")
  PUB_CLI[$tag]=$(timed_cpu "$RES/time-publish-$tag.txt")
  PUB_SRV[$tag]=$(sub_s "$s0" "$s1")
  WINDOW[$tag]=-; FRAMES[$tag]=-
  if command -v zstd >/dev/null && [ -f "$DATA/blobs/${ZSHA[$tag]}" ]; then
    zstd -lv "$DATA/blobs/${ZSHA[$tag]}" >"$RES/zstd-l-$tag.txt" 2>&1 || true
    WINDOW[$tag]=$(sed -n 's/^Window Size:.*(\([0-9]*\) B).*/\1/p' "$RES/zstd-l-$tag.txt" | head -1)
    FRAMES[$tag]=$(sed -n 's/^# Zstandard Frames: *\([0-9]*\).*/\1/p' "$RES/zstd-l-$tag.txt" | head -1)
    [ -n "${WINDOW[$tag]}" ] || WINDOW[$tag]=-
    [ -n "${FRAMES[$tag]}" ] || FRAMES[$tag]=-
  fi
  info "image $tag: ${LEN[$tag]} -> ${ZLEN[$tag]} bytes in ${PUB_T[$tag]} s (CLI CPU ${PUB_CLI[$tag]} s, server CPU ${PUB_SRV[$tag]} s)"
}
publish 512
publish 64
publish 1g

"$REL/ota-server" device issue --data-dir "$DATA" bench-dev-1 --out "$BASE/device" >/dev/null
api -H 'content-type: application/json' -d '{"ids":["bench-dev-1"]}' "$URL/api/v1/devices/preauthorize" >/dev/null \
  || die "preauthorize failed"
curl -sS --fail --cacert "$CA" -o "$BASE/device/1.root.json" "$URL/metadata/1.root.json" || die "root metadata"

# ---------------------------------------------------------------------------------------
# Installs

# A fresh device for image $1 taking the compressed form or not ($2 true|false): config,
# empty data dir, boot environment booted on A.
fresh_agent() {
  local d="$WORK_DIR/agent-$1-$2"
  rm -rf "$WORK_DIR"/agent-*; mkdir -p "$d"
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
compressed = $2
EOF
  "$REL/ota-agent" --config "$d/agent.toml" simulate-boot >/dev/null 2>"$RES/simulate-$1.err" || die "simulate-boot: $(cat "$RES/simulate-$1.err")"
  AGENT_DIR=$d
}

# One agent install of image $1 ($2: compressed true|false). Sets T (s), ACPU and SCPU
# (agent and server CPU s), RSS (KiB) and DL (bytes fetched); checks what was fetched and
# the slot's hash.
agent_install() {
  local tag=$1 z=$2 t0 t1 s0 s1 out log want got
  fresh_agent "$tag" "$z"
  log="$RES/agent-$tag-$z"
  sync
  s0=$(server_cpu); t0=$(now_ns)
  ${AGENT_WRAP:-} /usr/bin/time -v -o "$log.time" "$REL/ota-agent" --config "$AGENT_DIR/agent.toml" once \
    >"$log.out" 2>"$log.err" || die "ota-agent once ($tag, compressed = $z) failed: $(tail -3 "$log.err")"
  t1=$(now_ns); s1=$(server_cpu)
  out=$(cat "$log.out")
  case "$out" in *reboot_requested*) ;; *) die "ota-agent once ($tag, compressed = $z) did not install: $out";; esac
  T=$(secs "$t0" "$t1")
  ACPU=$(timed_cpu "$log.time")
  SCPU=$(sub_s "$s0" "$s1")
  RSS=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log.time")
  # The progress line counts the bytes fetched: the compressed file's for a compressed form.
  DL=$(sed 's/\x1b\[[0-9;]*m//g' "$log.err" | sed -n 's/.*download started.* total=\([0-9]*\).*/\1/p' | head -1)
  if [ "$z" = true ]; then want=${ZLEN[$tag]}; else want=${LEN[$tag]}; fi
  [ "$DL" = "$want" ] || die "ota-agent ($tag, compressed = $z) fetched '${DL}' bytes, expected $want (see $log.err)"
  got=$(sha256sum "$AGENT_DIR/slot-b" | cut -c1-64)
  [ "$got" = "$(cat "$CACHE/$tag.sha256")" ] || die "slot of $tag (compressed = $z) holds $got, expected $(cat "$CACHE/$tag.sha256")"
}

best() { printf '%s\n' "$@" | sort -g | head -1; }
worst() { printf '%s\n' "$@" | sort -g | tail -1; }
mbs() { awk -v s="$1" -v b="$2" 'BEGIN {printf "%.0f", b / s / 1e6}'; }
# Seconds to move $1 bytes at $2 Mbit/s: the link-bound estimate.
link() { awk -v b="$1" -v r="$2" 'BEGIN {printf "%.1f", b * 8 / (r * 1e6)}'; }

# Page cache: measure the decode and network path, not the server's disk.
cat "$CACHE/512.img" "$DATA/blobs/$(cat "$CACHE/512.sha256")" "$DATA/blobs/${ZSHA[512]}" >/dev/null
ZT=(); ZA=(); ZS=(); ZR=(); PT=(); PA=(); PS=(); PR=()
for i in $(seq 1 "$TRIES"); do
  # Alternate the order, so neither mode always runs first after the other's disk writes.
  if [ $((i % 2)) = 1 ]; then order="true false"; else order="false true"; fi
  for z in $order; do
    agent_install 512 "$z"
    if [ "$z" = true ]; then ZT+=("$T"); ZA+=("$ACPU"); ZS+=("$SCPU"); ZR+=("$RSS")
    else PT+=("$T"); PA+=("$ACPU"); PS+=("$SCPU"); PR+=("$RSS"); fi
    info "try $i: compressed = $z: $T s, agent CPU $ACPU s, server CPU $SCPU s, fetched $DL bytes, RSS $RSS KiB (slot checked)"
  done
done
LINK_NOTE="skipped (LINK_MBIT=0)"
if [ "$LINK_MBIT" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v tc >/dev/null && tc qdisc add dev lo root tbf rate "${LINK_MBIT}mbit" burst 256kb latency 50ms 2>/dev/null; then
    SHAPED=1
    agent_install 64 true; LZ_T=$T
    agent_install 64 false; LP_T=$T
    unshape
    LINK_NOTE=measured
    info "64 MiB over $LINK_MBIT Mbit/s: compressed $LZ_T s, plain $LP_T s (slots checked)"
  else
    LINK_NOTE="skipped: shaping loopback needs root and tc (iproute2) with sch_tbf"
    info "shaped-link installs $LINK_NOTE"
  fi
fi
agent_install 64 true; RSS64=$RSS; T64=$T
info "64 MiB compressed: $T s, RSS $RSS KiB (slot checked)"
agent_install 1g true; RSS1G=$RSS; T1G=$T
info "1 GiB compressed: $T s, RSS $RSS KiB (slot checked)"
rm -rf "$WORK_DIR"/agent-*

# ---------------------------------------------------------------------------------------
# Figures

Z_WALL=$(best "${ZT[@]}"); Z_ACPU=$(best "${ZA[@]}"); Z_SCPU=$(best "${ZS[@]}"); Z_RSS=$(worst "${ZR[@]}")
P_WALL=$(best "${PT[@]}"); P_ACPU=$(best "${PA[@]}"); P_SCPU=$(best "${PS[@]}"); P_RSS=$(worst "${PR[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", 100 * a / b}'; }
ok() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? (v >= t) : (v <= t); print ok ? "met" : "MISSED"}'; }

for tag in 64 512 1g; do
  emit "image_${tag}_bytes" "${LEN[$tag]}" B
  emit "image_${tag}_fill" "$(info_of "$tag" fill_percent)" %
  emit "zstd_${tag}_bytes" "${ZLEN[$tag]}" B
  emit "zstd_${tag}_ratio" "$(ratio "${LEN[$tag]}" "${ZLEN[$tag]}")" x
  emit "zstd_${tag}_frames" "${FRAMES[$tag]}" frames
  emit "zstd_${tag}_window" "${WINDOW[$tag]}" B
  emit "publish_${tag}" "${PUB_T[$tag]}" s
  emit "publish_${tag}_cli_cpu" "${PUB_CLI[$tag]}" s
  emit "publish_${tag}_server_cpu" "${PUB_SRV[$tag]}" s
done
emit agent_install_512_zstd "$Z_WALL" s; emit agent_install_512_zstd_rate "$(mbs "$Z_WALL" "${LEN[512]}")" MB/s
emit agent_install_512_zstd_agent_cpu "$Z_ACPU" s; emit agent_install_512_zstd_server_cpu "$Z_SCPU" s
emit agent_install_512_zstd_fetched "${ZLEN[512]}" B; emit agent_rss_512mib_zstd "$Z_RSS" KiB
emit agent_install_512_plain "$P_WALL" s; emit agent_install_512_plain_rate "$(mbs "$P_WALL" "${LEN[512]}")" MB/s
emit agent_install_512_plain_agent_cpu "$P_ACPU" s; emit agent_install_512_plain_server_cpu "$P_SCPU" s
emit agent_install_512_plain_fetched "${LEN[512]}" B; emit agent_rss_512mib_plain "$P_RSS" KiB
for r in 100 10; do
  emit "link_${r}mbit_512_plain_estimate" "$(link "${LEN[512]}" "$r")" s
  emit "link_${r}mbit_512_zstd_estimate" "$(link "${ZLEN[512]}" "$r")" s
done
if [ "$LINK_NOTE" = measured ]; then
  emit "link_${LINK_MBIT}mbit_64_zstd" "$LZ_T" s; emit "link_${LINK_MBIT}mbit_64_plain" "$LP_T" s
fi
emit agent_rss_64mib_zstd "$RSS64" KiB; emit agent_install_64mib_zstd "$T64" s
emit agent_rss_1gib_zstd "$RSS1G" KiB; emit agent_install_1gib_zstd "$T1G" s

mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
win() { if [ "$1" = - ]; then echo "-"; else awk -v b="$1" 'BEGIN {printf "%g MiB", b / 1048576}'; fi; }
if [ "${WINDOW[1g]}" = - ]; then
  rss_note() { echo "(window unknown: zstd -lv did not say)"; }
else
  window_1g=${WINDOW[1g]}
  RSS_TARGET=$((RSS_PLAIN_BUDGET + window_1g / 1024))
  rss_note() { echo "< $RSS_TARGET (plain budget $RSS_PLAIN_BUDGET + window): $(ok "$1" '<=' $((RSS_TARGET - 1)))"; }
fi
{
  echo
  echo "# ota-agent install through the zstd form, $(date -u +%FT%TZ), level $LEVEL, best of $TRIES; load after: $(uptime | sed 's/.*load/load/')"
  echo "# images: $IMAGE_DESC; cached in $CACHE"
  printf '%-50s %12s  %s\n' figure value note
  for tag in 64 512 1g; do
    case $tag in 64) label="64 MiB";; 512) label="512 MiB";; 1g) label="1 GiB";; esac
    printf '%-50s %12s  %s\n' "$label image: compressed form (bytes)" "${ZLEN[$tag]}" \
      "$(mib "${ZLEN[$tag]}"), $(pct "${ZLEN[$tag]}" "${LEN[$tag]}")% of the image, ratio $(ratio "${LEN[$tag]}" "${ZLEN[$tag]}"); image $(info_of "$tag" fill_percent)% used, $(info_of "$tag" files) files"
    printf '%-50s %12s  %s\n' "  ota publish --zstd, wall (s)" "${PUB_T[$tag]}" \
      "compress + upload both + server check; CPU: CLI ${PUB_CLI[$tag]} s, server ${PUB_SRV[$tag]} s"
    printf '%-50s %12s  %s\n' "  zstd frames / window (zstd -lv)" "${FRAMES[$tag]}" "window $(win "${WINDOW[$tag]}")"
  done
  printf '%-50s %12s  %s\n' "agent install 512 MiB, compressed = true (s)" "$Z_WALL" "$(mbs "$Z_WALL" "${LEN[512]}") MB/s of image; $(ratio "$Z_WALL" "$P_WALL") x the plain install"
  printf '%-50s %12s  %s\n' "agent install 512 MiB, compressed = false (s)" "$P_WALL" "$(mbs "$P_WALL" "${LEN[512]}") MB/s"
  printf '%-50s %12s  %s\n' "  agent CPU, compressed / plain (s)" "$Z_ACPU" "plain: $P_ACPU s"
  printf '%-50s %12s  %s\n' "  server CPU, compressed / plain (s)" "$Z_SCPU" "plain: $P_SCPU s"
  printf '%-50s %12s  %s\n' "  bytes fetched, compressed / plain" "${ZLEN[512]}" "plain: ${LEN[512]} ($(pct "${ZLEN[512]}" "${LEN[512]}")%)"
  printf '%-50s %12s  %s\n' "  peak RSS, compressed / plain (KiB, worst try)" "$Z_RSS" "plain: $P_RSS KiB"
  for r in 100 10; do
    printf '%-50s %12s  %s\n' "ESTIMATE 512 MiB over $r Mbit/s, compressed (s)" "$(link "${ZLEN[512]}" "$r")" \
      "plain: $(link "${LEN[512]}" "$r") s; $(ratio "${LEN[512]}" "${ZLEN[512]}") x less (bytes*8/rate: transfer only, not measured)"
  done
  if [ "$LINK_NOTE" = measured ]; then
    printf '%-50s %12s  %s\n' "MEASURED 64 MiB over $LINK_MBIT Mbit/s, compressed (s)" "$LZ_T" \
      "plain: $LP_T s; $(ratio "$LP_T" "$LZ_T") x faster (loopback shaped by tc tbf, whole install)"
  else
    printf '%-50s %12s  %s\n' "64 MiB over a shaped link" "-" "$LINK_NOTE"
  fi
  printf '%-50s %12s  %s\n' "agent peak RSS, 64 MiB compressed (KiB)" "$RSS64" "$(rss_note "$RSS64"); install $T64 s"
  printf '%-50s %12s  %s\n' "agent peak RSS, 1 GiB compressed (KiB)" "$RSS1G" "$(rss_note "$RSS1G"); install $T1G s"
  printf '%-50s %12s  %s\n' "  RSS growth 64 MiB -> 1 GiB (KiB)" "$((RSS1G - RSS64))" "~0 if memory is constant in the image size (the decoder adds its window, $(win "${WINDOW[1g]}") here, + 256 KiB out buffer)"
}
