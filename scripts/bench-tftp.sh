#!/usr/bin/env bash
# `make bench`: TFTP throughput of tftpd-hpa, atftpd, dnsmasq and COSM, and COSM's HTTP boot
# downloads, in the same run, in one network namespace made for it.
#
# Cases (atftp client, blksize 1468, each server alone on 127.0.0.1:69 in the namespace, the
# server pinned to CPU 0 and the clients to CPU 1):
#   64MiB ws1    one 64 MiB transfer, windowsize 1 (no windowsize option sent)
#   64MiB ws16   one 64 MiB transfer, windowsize 16 (servers without RFC 7440 answer with
#                windowsize 1, as the OACK allows)
#   storm ws1    50 clients at once, each a 4 MiB file, windowsize 1: total MiB/s
#   storm ws16   the same with windowsize 16
# A transfer counts only if the received file has the source's sha256; failures are
# counted (over every run) and shown. Each figure is the best of BENCH_REPEAT runs
# (default 3), for every server alike. Files are written to /dev/shm so the disk is not measured.
#
# HTTP: 50 curl clients at once each download the agent kernel and initrd (vmlinuz +
# initramfs.img, ~14 MB) from COSM's /boot endpoint: total MiB/s and failures. No peer is
# named for this case; the figure stands alone.
#
# atftpd and tftpd-hpa conflict as Debian packages, so atftpd's binary is unpacked from its
# .deb into target/bench-peers (apt-get download; nothing is installed system-wide).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-tftp needs root (a network namespace)"; exit 1; }
REPEAT=${BENCH_REPEAT:-3}
CLIENTS=${BENCH_CLIENTS:-50}
SERVERS=${BENCH_TFTP_SERVERS:-"tftpd-hpa atftpd dnsmasq cosm"}
NS=cosmtftpb$$
WORK=$(mktemp -d /dev/shm/cosm-bench-tftp.XXXXXX)
ROOT=$WORK/root
OUT=$WORK/out
mkdir -p "$ROOT" "$OUT"
# The peers drop privileges to nobody; they must be able to read the files.
chmod 755 "$WORK" "$ROOT"
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
inns() { ip netns exec "$NS" "$@"; }

need() { command -v "$1" >/dev/null || { echo "missing $1: install the Debian package $2 (make bench-deps)"; exit 1; }; }
need atftp atftp
need dnsmasq dnsmasq-base
[ -x /usr/sbin/in.tftpd ] || { echo "missing /usr/sbin/in.tftpd: install the Debian package tftpd-hpa"; exit 1; }
ATFTPD=target/bench-peers/usr/sbin/atftpd
if [ ! -x "$ATFTPD" ]; then
  echo "unpacking atftpd from its Debian package into target/bench-peers"
  mkdir -p target/bench-peers
  (cd target/bench-peers && apt-get download -q atftpd >/dev/null && dpkg-deb -x atftpd_*.deb .)
fi
APPLIANCE=target/release/cosm-appliance
[ -x "$APPLIANCE" ] || { echo "build the release appliance first: cargo build --release -p cosm-appliance"; exit 1; }

ip netns add "$NS"
inns ip link set lo up
# tftpd-hpa resolves its --address with AI_ADDRCONFIG, which ignores loopback: give the
# namespace one non-loopback address (a veth pair inside it; TEST-NET-2, never routed).
inns ip link add bv0 type veth peer name bv1
inns ip addr add 198.51.100.1/24 dev bv0
inns ip link set bv0 up
inns ip link set bv1 up

head -c $((64 << 20)) /dev/urandom >"$ROOT/big64.bin"
head -c $((4 << 20)) /dev/urandom >"$ROOT/storm4.bin"
SUM64=$(sha256sum <"$ROOT/big64.bin" | cut -d' ' -f1)
SUM4=$(sha256sum <"$ROOT/storm4.bin" | cut -d' ' -f1)
cp images/out/vmlinuz images/out/initramfs.img "$ROOT/" 2>/dev/null || true

# Servers start with `ip netns exec` itself (not the inns function) so that $! is the
# server's own PID (ip and taskset exec it), which stop_server kills.
start_server() {
  local name=$1 log=$WORK/$1.log
  case $name in
    tftpd-hpa)
      ip netns exec "$NS" taskset -c 0 /usr/sbin/in.tftpd --listen --foreground --user nobody --address 127.0.0.1:69 --secure "$ROOT" >"$log" 2>&1 &
      ;;
    atftpd)
      ip netns exec "$NS" taskset -c 0 "$ATFTPD" --daemon --no-fork --port 69 --bind-address 127.0.0.1 \
        --logfile "$log" --verbose=1 "$ROOT" >>"$log" 2>&1 &
      ;;
    dnsmasq)
      ip netns exec "$NS" taskset -c 0 dnsmasq --no-daemon --conf-file=/dev/null --port=0 --enable-tftp \
        --tftp-root="$ROOT" --listen-address=127.0.0.1 --bind-interfaces --log-facility="$log" >>"$log" 2>&1 &
      ;;
    cosm)
      cat >"$WORK/cosm.toml" <<TOML
data_dir = "$WORK/cosm-data"
[api]
listen = "127.0.0.1:18080"
[boot]
dir = "$ROOT"
ramdisk_dir = "$ROOT"
[tftp]
listen = "127.0.0.1:69"
TOML
      ip netns exec "$NS" taskset -c 0 "$APPLIANCE" serve --config "$WORK/cosm.toml" >"$log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    inns ss -uln 2>/dev/null | grep -q '127.0.0.1:69 ' && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start listening on 127.0.0.1:69; its log:"; cat "$log"; SERVER_PID=""; return 1
}

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || { echo "    the server had exited; its log:"; tail -20 "$WORK"/*.log; }
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}

now() { date +%s.%N; }

# one_transfer WS -> prints MiB/s or "fail"
one_transfer() {
  local ws=$1 opts=(--option "blksize 1468") t0 t1
  [ "$ws" != 1 ] && opts+=(--option "windowsize $ws")
  rm -f "$OUT/one.bin"
  t0=$(now)
  if ! inns taskset -c 1 timeout 120 atftp --get -r big64.bin -l "$OUT/one.bin" "${opts[@]}" 127.0.0.1 69 >/dev/null 2>&1; then
    echo fail; return
  fi
  t1=$(now)
  [ "$(sha256sum <"$OUT/one.bin" | cut -d' ' -f1)" = "$SUM64" ] || { echo fail; return; }
  echo "scale=1; 64 / ($t1 - $t0)" | bc
}

# storm WS -> prints "MiB/s failures"
storm() {
  local ws=$1 opts=(--option "blksize 1468") pids=() t0 t1 fails=0 i
  [ "$ws" != 1 ] && opts+=(--option "windowsize $ws")
  rm -f "$OUT"/storm*.bin
  t0=$(now)
  for i in $(seq 1 "$CLIENTS"); do
    inns taskset -c 1 timeout 300 atftp --get -r storm4.bin -l "$OUT/storm$i.bin" "${opts[@]}" 127.0.0.1 69 >/dev/null 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  t1=$(now)
  local bad=0
  for i in $(seq 1 "$CLIENTS"); do
    [ "$(sha256sum <"$OUT/storm$i.bin" 2>/dev/null | cut -d' ' -f1)" = "$SUM4" ] || bad=$((bad + 1))
  done
  [ "$bad" -gt "$fails" ] && fails=$bad
  echo "$(echo "scale=1; $CLIENTS * 4 / ($t1 - $t0)" | bc) $fails"
}

best() { # best of N runs of one_transfer
  local ws=$1 b=fail r i
  for i in $(seq 1 "$REPEAT"); do
    r=$(one_transfer "$ws")
    [ "$r" = fail ] && continue
    if [ "$b" = fail ] || [ "$(echo "$r > $b" | bc)" = 1 ]; then b=$r; fi
  done
  echo "$b"
}

declare -A RES FAILS
for s in $SERVERS; do
  echo "--- $s"
  start_server "$s" || { for c in ws1 ws16 sws1 sws16; do RES[$s,$c]=failed; done; continue; }
  RES[$s,ws1]=$(best 1); echo "    64MiB ws1:  ${RES[$s,ws1]} MiB/s"
  RES[$s,ws16]=$(best 16); echo "    64MiB ws16: ${RES[$s,ws16]} MiB/s"
  for ws in 1 16; do
    # Best of BENCH_REPEAT storms (like the single transfers); failures add up over all.
    bestr=0; allf=0
    for _ in $(seq 1 "$REPEAT"); do
      read -r r f < <(storm "$ws")
      allf=$((allf + f))
      [ "$(echo "$r > $bestr" | bc)" = 1 ] && bestr=$r
    done
    RES[$s,sws$ws]=$bestr; FAILS[$s,sws$ws]=$allf
    echo "    storm ws$ws: $bestr MiB/s (best of $REPEAT), $allf failed"
  done
  if [ "$s" = cosm ]; then
    # HTTP boot downloads: kernel + initrd per client.
    rm -f "$OUT"/http*
    t0=$(now); pids=(); hf=0
    for i in $(seq 1 "$CLIENTS"); do
      inns taskset -c 1 sh -c "curl -sf -o $OUT/httpk$i http://127.0.0.1:18080/boot/vmlinuz && curl -sf -o $OUT/httpi$i http://127.0.0.1:18080/boot/initramfs.img" &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || hf=$((hf + 1)); done
    t1=$(now)
    bytes=$(( $(stat -c %s "$ROOT/vmlinuz") + $(stat -c %s "$ROOT/initramfs.img") ))
    for i in $(seq 1 "$CLIENTS"); do
      cmp -s "$OUT/httpk$i" "$ROOT/vmlinuz" && cmp -s "$OUT/httpi$i" "$ROOT/initramfs.img" || hf=$((hf + 1))
    done
    HTTP_RATE=$(echo "scale=1; $CLIENTS * $bytes / 1048576 / ($t1 - $t0)" | bc)
    HTTP_FAILS=$hf
    echo "    HTTP kernel+initrd x$CLIENTS: $HTTP_RATE MiB/s, $hf failed"
  fi
  stop_server
done

echo
echo "TFTP throughput, MiB/s (atftp client, blksize 1468; storms: $CLIENTS clients x 4 MiB, total; failed transfers in brackets)"
printf '%-12s' case; for s in $SERVERS; do printf '%14s' "$s"; done; printf '%16s\n' "cosm/best peer"
for c in ws1 ws16 sws1 sws16; do
  case $c in ws1) label="64MiB ws1";; ws16) label="64MiB ws16";; sws1) label="storm ws1";; sws16) label="storm ws16";; esac
  printf '%-12s' "$label"
  bestpeer=0
  for s in $SERVERS; do
    v=${RES[$s,$c]:-n/a}; f=${FAILS[$s,$c]:-}
    cell=$v; [ -n "$f" ] && cell="$v [$f]"
    printf '%14s' "$cell"
    if [ "$s" != cosm ] && [[ $v =~ ^[0-9.]+$ ]] && [ "$(echo "$v > $bestpeer" | bc)" = 1 ]; then bestpeer=$v; fi
  done
  v=${RES[cosm,$c]:-}
  if [[ $v =~ ^[0-9.]+$ ]] && [ "$(echo "$bestpeer > 0" | bc)" = 1 ]; then
    printf '%15sx\n' "$(echo "scale=2; $v / $bestpeer" | bc)"
  else
    printf '%16s\n' "-"
  fi
done
[ -n "${HTTP_RATE:-}" ] && echo "HTTP boot (COSM /boot): $CLIENTS clients x kernel+initrd: $HTTP_RATE MiB/s total, ${HTTP_FAILS} failed"
