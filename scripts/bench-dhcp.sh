#!/usr/bin/env bash
# `make bench`: DHCPv4 lease throughput of Kea, dnsmasq and COSM, measured with perfdhcp in the
# same run on the same machine, printed side by side.
#
# Topology: two network namespaces made for this run, joined by one veth pair.
#   server ns  198.51.100.1/24  - the DHCP server under test, pinned to CPU 0 (taskset -c 0)
#   client ns  198.51.100.2/24  - perfdhcp, pinned to CPU 1 (taskset -c 1)
# IPv6 is disabled in both. No traffic leaves the namespaces (198.51.100.0/24 is TEST-NET-2).
#
# Addressing choice. perfdhcp (DHCPv4) behaves as a relay: every DISCOVER/REQUEST carries
# giaddr = its -l address (198.51.100.2), comes from port 67, and the server answers to
# giaddr:67. A server picks the subnet for a relayed request from giaddr, so giaddr must lie
# in a subnet the server serves. Every server here serves the same single subnet,
# 198.51.100.0/24 with the pool 198.51.100.10-198.51.100.250 (241 addresses), which contains
# the relay address. perfdhcp simulates at most
# BENCH_MACS (default 200 <= 241) distinct MACs, so the pool never runs out; once every MAC
# holds its address, further DORAs for the same MAC re-offer and re-commit that lease (a
# lease write each time), which is the throughput measured. The alternative - a second
# subnet 203.0.113.0/24 reached through the relay - would add only 254 addresses and needs
# a relay-to-subnet mapping in every server (Kea "relay": {"ip-addresses"}, dnsmasq
# --shared-network, COSM `relays`); one subnet keeps the three configs plain and alike.
#
# Method: for each server (kea, dnsmasq, cosm in that order) the server is started alone,
# must listen on UDP 67 within 20 s and complete at least one DORA in a 3 s check (or it is
# marked "failed" with its log shown, and the next server runs), then perfdhcp runs at
# increasing rates (BENCH_RATES) for BENCH_PERIOD seconds each. A step counts only completed DORAs: leases/s = ACKs received /
# period; loss % = (DISCOVERs sent - ACKs received) / DISCOVERs sent. The series stops at the
# first step above BENCH_MAX_LOSS % (default 1), or when perfdhcp itself cannot send at the
# asked rate (then the figure is the client's limit, and the table says so). A server's
# figure is its best leases/s among the steps within the loss bound.
#
# COSM gets the same subnet and pool through its appliance config ([dhcp] with one
# [[dhcp.subnets]]; per_mac_rate = 0, see start_cosm). If it exits, rejects the config,
# never listens on UDP 67 or completes no DORA, it is marked "failed" with its log shown
# and the other servers' figures still stand.
#
# Settings kept equal for fairness: no per-lease logging (Kea loggers at WARN, dnsmasq
# --quiet-dhcp), leases persisted to a file in a temp dir (Kea memfile persist=true with
# lfc-interval 0; dnsmasq its lease file; COSM its data_dir), single-threaded Kea, dnsmasq
# without its ping-before-offer check (--no-ping; Kea and COSM do not ping either). Measured
# here: dnsmasq's stock ping stalls it ~3 s per new address (no DORA completes in the
# start-up check), and its per-packet log lines (no --quiet-dhcp) cut it from ~2000 to
# ~250-500 leases/s. BENCH_DNSMASQ_FLAGS="" shows that stock behaviour.
#
# perfdhcp runs in multi-thread mode (its default; -g single lost 6% at 8000/s where multi
# lost none). An overloaded server collapses rather than plateauing (Kea asked for 11000/s
# completed ~2000/s: DISCOVERs crowd the REQUESTs out of its socket queue), which is why a
# series stops at the first step above the loss bound. Typical figures on the 2-core dev
# machine, idle: Kea ~8000 leases/s, dnsmasq ~2000 (Kea 2.2.0, dnsmasq 2.90). Other work on
# the machine (a cargo build, a QEMU guest) easily halves them: every step prints the CPU
# that other work took ("other %") and the table warns when a step was disturbed.
#
# Environment:
#   BENCH_SERVERS   servers to run, in order (default "kea dnsmasq cosm")
#   BENCH_RATES     perfdhcp rates in exchanges/s, ascending (default 250 ... 32000)
#   BENCH_PERIOD    seconds per rate step (default 5)
#   BENCH_MACS      distinct client MACs, perfdhcp -R (default 200, at most 241)
#   BENCH_MAX_LOSS  loss % that ends a series (default 1)
#   BENCH_DEADLINE  seconds after which no new rate step starts (default 420)
#   BENCH_PERFDHCP_THREADS  perfdhcp -g: multi (default) or single
#   BENCH_DNSMASQ_FLAGS     extra dnsmasq flags (default "--no-ping --quiet-dhcp"; set it empty
#                           for dnsmasq's stock behaviour: ping before offering, a log line
#                           per packet)
#   COSM_BIN        the appliance binary (default target/release/cosm-appliance; built with
#                   `cargo build --release --bins` when missing)
#   BENCH_FOREIGN_WARN  mark a step "*" when other work used more than this % of one CPU
#                   during it (default 50); "other %" is printed for every step. It also
#                   counts kernel work the traffic causes outside the two processes
#                   (e.g. writeback of a lease file): ~35-45% for Kea at 8000-9000/s on
#                   an otherwise idle machine, hence the default
#   BENCH_KEEP=1    keep the temp dir with configs, logs and perfdhcp outputs
set -uo pipefail
cd "$(dirname "$0")/.."

SERVERS=${BENCH_SERVERS:-kea dnsmasq cosm}
RATES=${BENCH_RATES:-250 500 1000 1500 2000 3000 4000 5000 6000 7000 8000 9000 10000 12000 14000 16000 20000 24000 32000}
PERIOD=${BENCH_PERIOD:-5}
MACS=${BENCH_MACS:-200}
MAX_LOSS=${BENCH_MAX_LOSS:-1}
DEADLINE=${BENCH_DEADLINE:-420}
COSM_BIN=${COSM_BIN:-target/release/cosm-appliance}
PD_THREADS=${BENCH_PERFDHCP_THREADS:-multi}
DNSMASQ_FLAGS=${BENCH_DNSMASQ_FLAGS---no-ping --quiet-dhcp}

SERVER_ADDR=198.51.100.1
CLIENT_ADDR=198.51.100.2
SUBNET=198.51.100.0/24
POOL_LO=198.51.100.10
POOL_HI=198.51.100.250
SERVER_CPU=0
CLIENT_CPU=1

NS_S="cosmbench-s-$$"
NS_C="cosmbench-c-$$"
VETH_S="cbs$$"   # <= 15 characters for any pid
VETH_C="cbc$$"
WORK=""
PIDS=()          # every background process this script started, killed by PID on exit
START=$SECONDS

log() { printf '%s\n' "$*" >&2; }
die() { log "bench-dhcp: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
# is_ours PID: the process is alive and still a child of this script. bash reaps exited
# background jobs on its own, so a PID from PIDS may already name someone else's process.
is_ours() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                      # after "pid (comm) ": "state ppid ..."
  set -- $stat
  [ "$1" != Z ] && [ "$2" = "$$" ]
}

stop_pid() { # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL; only if it is still ours
  local pid=$1 i
  if is_ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do
      is_ours "$pid" || break
      sleep 0.1
    done
    is_ours "$pid" && kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  local pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  ip netns del "$NS_S" 2>/dev/null
  ip netns del "$NS_C" 2>/dev/null
  if [ -n "$WORK" ]; then
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept configs, logs and perfdhcp outputs in $WORK"
    else rm -rf "$WORK"; fi
  fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- checks
[ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces)"
need() { # need TOOL PACKAGE
  command -v "$1" >/dev/null 2>&1 ||
    die "'$1' is missing: install the Debian package $2 (\`make deps\` installs it)"
}
need ip iproute2
need ss iproute2
need taskset util-linux
need timeout coreutils
need perfdhcp kea-admin
for s in $SERVERS; do
  case $s in
    kea) need kea-dhcp4 kea-dhcp4-server ;;
    dnsmasq) need dnsmasq dnsmasq-base ;;
    cosm) ;;
    *) die "unknown server '$s' in BENCH_SERVERS (kea, dnsmasq, cosm)" ;;
  esac
done
[ "$(nproc --all)" -ge 2 ] || log "warning: fewer than 2 CPUs; server and client share one"
[ "$MACS" -le 241 ] || die "BENCH_MACS=$MACS exceeds the 241-address pool"

# ---------------------------------------------------------------- perfdhcp output
# perfdhcp_parse FILE PERIOD -> "disc_sent offer_recv req_sent ack_recv loss_pct leases_per_s send_rate"
# send_rate is DISCOVERs sent / period (perfdhcp's own "Rate:" line is diluted by the -W exit
# wait, so it is not used); loss counts a DORA as lost unless its ACK arrived.
perfdhcp_parse() {
  awk -v period="$2" '
    /^\*\*\*Statistics for: DISCOVER-OFFER/ { sect = "do" }
    /^\*\*\*Statistics for: REQUEST-ACK/    { sect = "ra" }
    /^sent packets:/     { sent[sect] = $3 }
    /^received packets:/ { recv[sect] = $3 }
    END {
      if (sent["do"] == "") { print "parse-error"; exit 1 }
      ds = sent["do"] + 0; ack = recv["ra"] + 0
      loss = ds > 0 ? 100 * (ds - ack) / ds : 100
      printf "%d %d %d %d %.2f %.0f %.0f\n", ds, recv["do"], sent["ra"], ack, loss, ack / period, ds / period
    }' "$1"
}

# ---------------------------------------------------------------- namespaces
WORK=$(mktemp -d /tmp/cosm-bench-dhcp.XXXXXX)
ip netns add "$NS_S" || die "cannot create namespace $NS_S"
ip netns add "$NS_C" || die "cannot create namespace $NS_C"
ip link add "$VETH_S" type veth peer name "$VETH_C" || die "cannot create veth pair"
ip link set "$VETH_S" netns "$NS_S" && ip link set "$VETH_C" netns "$NS_C" || die "cannot move veth"
for ns in "$NS_S" "$NS_C"; do
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 ||
    die "cannot disable IPv6 in $ns"
  ip -n "$ns" link set lo up
done
ip -n "$NS_S" addr add "$SERVER_ADDR/24" dev "$VETH_S" && ip -n "$NS_S" link set "$VETH_S" up &&
  ip -n "$NS_C" addr add "$CLIENT_ADDR/24" dev "$VETH_C" && ip -n "$NS_C" link set "$VETH_C" up ||
  die "cannot address the veth pair"
ip netns exec "$NS_C" ping -c1 -W2 "$SERVER_ADDR" >/dev/null 2>&1 ||
  log "warning: $SERVER_ADDR does not answer ping from the client namespace"

# ---------------------------------------------------------------- servers
# Each start_* writes its config under $WORK, starts the server in the server namespace on
# CPU $SERVER_CPU in the background, and sets SERVER_PID and SERVER_LOG.
SERVER_PID=""
SERVER_LOG=""

start_kea() {
  local d=$WORK/kea
  mkdir -p "$d"
  cat >"$d/kea-dhcp4.json" <<JSON
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["$VETH_S"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "lfc-interval": 0, "name": "$d/leases4.csv"},
  "multi-threading": {"enable-multi-threading": false},
  "authoritative": true,
  "valid-lifetime": 3600, "renew-timer": 900, "rebind-timer": 1800,
  "subnet4": [{
    "id": 1, "subnet": "$SUBNET",
    "pools": [{"pool": "$POOL_LO - $POOL_HI"}],
    "option-data": [{"name": "routers", "data": "$SERVER_ADDR"},
                    {"name": "domain-name-servers", "data": "$SERVER_ADDR"}]
  }],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
               "output_options": [{"output": "$d/kea.log"}]}]
}}
JSON
  SERVER_LOG=$d/stderr.log
  KEA_PIDFILE_DIR=$d KEA_LOCKFILE_DIR=$d \
    ip netns exec "$NS_S" taskset -c "$SERVER_CPU" kea-dhcp4 -c "$d/kea-dhcp4.json" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
}

start_dnsmasq() {
  local d=$WORK/dnsmasq
  mkdir -p "$d"
  SERVER_LOG=$d/dnsmasq.log
  : >"$SERVER_LOG"
  ip netns exec "$NS_S" taskset -c "$SERVER_CPU" dnsmasq --no-daemon --conf-file=/dev/null \
    --user=root --group=root --pid-file="$d/dnsmasq.pid" --port=0 \
    --interface="$VETH_S" --bind-interfaces \
    --dhcp-range="$POOL_LO,$POOL_HI,255.255.255.0,1h" \
    --dhcp-option=option:router,"$SERVER_ADDR" --dhcp-option=option:dns-server,"$SERVER_ADDR" \
    --dhcp-authoritative --dhcp-lease-max=1000 $DNSMASQ_FLAGS \
    --dhcp-leasefile="$d/dnsmasq.leases" --log-facility="$SERVER_LOG" >"$d/stderr.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_LOG="$d/stderr.log $SERVER_LOG"
}

start_cosm() {
  local d=$WORK/cosm
  mkdir -p "$d"
  SERVER_LOG=$d/appliance.log
  if [ ! -x "$COSM_BIN" ]; then
    log "   $COSM_BIN is missing: cargo build --release --bins (may take several minutes the first time)"
    if ! command -v cargo >/dev/null 2>&1; then
      echo "cargo is not installed, cannot build $COSM_BIN" >"$SERVER_LOG"
      return 1
    fi
    cargo build --release --bins >"$d/build.log" 2>&1 || {
      { echo "cargo build --release --bins failed:"; tail -n 30 "$d/build.log"; } >"$SERVER_LOG"
      return 1
    }
    [ -x "$COSM_BIN" ] || { echo "the build did not produce $COSM_BIN" >"$SERVER_LOG"; return 1; }
  fi
  cat >"$d/appliance.toml" <<TOML
data_dir = "$d/data"

[api]
listen = "127.0.0.1:0"

[dhcp]
mode = "authoritative"
listen = "0.0.0.0:67"
server_id = "$SERVER_ADDR"
# The per-MAC guard (default 20 packets/s per MAC) would cap this bench, whose 200 MACs each
# send up to ~100 packets/s, at ~2000 DORA/s: a limit of the bench, not of the server.
per_mac_rate = 0

[[dhcp.subnets]]
cidr = "$SUBNET"
pools = ["$POOL_LO-$POOL_HI"]
routers = ["$SERVER_ADDR"]
dns = ["$SERVER_ADDR"]
lease_time_secs = 3600
TOML
  ip netns exec "$NS_S" taskset -c "$SERVER_CPU" "$COSM_BIN" serve --log-level warn \
    --config "$d/appliance.toml" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
}

# wait_ready: up to 20 s for the server to listen on UDP 67 in its namespace; fails early if
# the process exits.
wait_ready() {
  local i
  for i in $(seq 1 200); do
    if ! is_ours "$SERVER_PID"; then
      wait "$SERVER_PID" 2>/dev/null
      FAIL_REASON="exited during start-up (exit status $?)"
      return 1
    fi
    if ip netns exec "$NS_S" ss -Hlun 'sport = :67' 2>/dev/null | grep -q .; then return 0; fi
    sleep 0.1
  done
  FAIL_REASON="not listening on UDP 67 after 20 s"
  return 1
}

show_log() {
  local f
  for f in $SERVER_LOG; do
    [ -s "$f" ] && { log "   --- $f (last lines)"; tail -n 15 "$f" | sed 's/^/   | /' >&2; }
  done
}

# run_perfdhcp OUT RATE: one perfdhcp step from the client namespace on CPU $CLIENT_CPU,
# bounded by timeout. RATE "" is the start-up check: 20 DORAs/s for 3 s. (perfdhcp's
# single-exchange modes are unreliable here: `-n 1` exits before the answer in multi-thread
# mode, and `-n 1 -W` keeps sending at full speed.)
run_perfdhcp() {
  local out=$1 rate=$2 args pid rc
  if [ -n "$rate" ]; then args=(-R "$MACS" -r "$rate" -p "$PERIOD" -W 500000)
  else args=(-R "$MACS" -r 20 -p 3 -W 1000000); fi
  timeout -k 2 $((PERIOD + 15)) ip netns exec "$NS_C" taskset -c "$CLIENT_CPU" \
    perfdhcp -4 -g "$PD_THREADS" -l "$CLIENT_ADDR" "${args[@]}" "$SERVER_ADDR" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid"
  rc=$?
  return $rc
}

# Results, one entry per server.
declare -A BEST_RATE BEST_LOSS STATUS WHY
RESULT_FILE=$WORK/results.txt

bench_server() {
  local s=$1 rate out parsed ds or rs ack loss lps sent_rate step=0 m0 o0 s0 ms0 foreign mark
  FAIL_REASON=""
  log ""
  log "==> $s"
  if ! "start_$s"; then
    STATUS[$s]="failed"; WHY[$s]="could not be started"; log "   $s could not be started"; show_log; return
  fi
  if ! wait_ready; then
    STATUS[$s]="failed"; WHY[$s]=$FAIL_REASON; log "   $s $FAIL_REASON"; show_log
    stop_pid "$SERVER_PID"; return
  fi
  out=$WORK/$s.smoke.out
  run_perfdhcp "$out" ""
  parsed=$(perfdhcp_parse "$out" 3)
  read -r ds or rs ack loss lps sent_rate <<<"$parsed"
  if [ "${ack:-0}" -lt 1 ]; then
    STATUS[$s]="failed"; WHY[$s]="no DORA completed in the start-up check"
    log "   $s did not complete a single DORA (perfdhcp: $(grep -m1 -iE 'error|exception' "$out" || echo "no ACK"))"
    show_log; stop_pid "$SERVER_PID"; return
  fi
  BEST_RATE[$s]=0; BEST_LOSS[$s]="-"; STATUS[$s]="top rate"
  printf '   %8s %9s %9s %8s %10s %9s %9s\n' "asked/s" "sent/s" "DISC" "ACK" "leases/s" "loss %" "other %" >&2
  for rate in $RATES; do
    if [ $((SECONDS - START)) -ge "$DEADLINE" ]; then
      STATUS[$s]="deadline"; log "   BENCH_DEADLINE ($DEADLINE s) reached: no further steps"; break
    fi
    if ! is_ours "$SERVER_PID"; then
      STATUS[$s]="failed"; WHY[$s]="exited during the run"; log "   $s exited during the run"; show_log; break
    fi
    step=$((step + 1))
    out=$WORK/$s.r$rate.out
    m0=$(machine_ticks); o0=$(own_ticks); s0=$(pid_ticks "$SERVER_PID"); ms0=$(now_ms)
    run_perfdhcp "$out" "$rate"
    foreign=$(foreign_pct "$m0" "$o0" "$s0" "$ms0")
    mark=""
    if [ "$foreign" -gt "$FOREIGN_WARN" ]; then mark="*"; FOREIGN_STEPS=$((FOREIGN_STEPS + 1)); fi
    if ! parsed=$(perfdhcp_parse "$out" "$PERIOD"); then
      STATUS[$s]="perfdhcp error"; log "   perfdhcp at $rate/s gave no report:"; tail -n 5 "$out" | sed 's/^/   | /' >&2; break
    fi
    read -r ds or rs ack loss lps sent_rate <<<"$parsed"
    printf '   %8s %9s %9s %8s %10s %9s %9s\n' "$rate" "$sent_rate" "$ds" "$ack" "$lps" "$loss" "$foreign$mark" >&2
    echo "$s $rate $parsed $foreign" >>"$RESULT_FILE"
    if awk -v l="$loss" -v m="$MAX_LOSS" 'BEGIN { exit !(l > m) }'; then
      STATUS[$s]="loss > $MAX_LOSS% at $rate/s"; break
    fi
    if [ "$lps" -gt "${BEST_RATE[$s]}" ]; then BEST_RATE[$s]=$lps; BEST_LOSS[$s]=$loss; fi
    if [ "$sent_rate" -lt $((rate * 9 / 10)) ]; then
      STATUS[$s]="client-bound ($sent_rate/s)"
      log "   perfdhcp sent only $sent_rate of $rate exchanges/s: the client is the limit here"; break
    fi
    sleep 0.5
  done
  stop_pid "$SERVER_PID"
}

# cpu_busy_pct: share of all CPUs busy over one second, before anything of ours runs. Other
# work on the machine (a cargo build) lowers every figure, so the table reports it.
cpu_busy_pct() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $5}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $5}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.0f", ((busy + idle) > 0 ? 100 * busy / (busy + idle) : 0) }'
}
# Foreign CPU during a step: CPU time spent in user/system mode on the whole machine minus
# what this script's processes used (the server, and perfdhcp once reaped), in % of one CPU.
# Above FOREIGN_WARN the step shared the machine with other work and is marked "*".
HZ=$(getconf CLK_TCK)
FOREIGN_WARN=${BENCH_FOREIGN_WARN:-50}
machine_ticks() { awk '/^cpu /{print $2+$3+$4}' /proc/stat; }
pid_ticks() { # utime+stime of a live process, 0 if gone
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  st=${st##*) }
  set -- $st
  echo $(( ${12} + ${13} ))
}
own_ticks() { # this shell and its reaped children (perfdhcp via timeout)
  times >"$WORK/times"
  awk -v hz="$HZ" '{ for (i = 1; i <= NF; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] } }
    END { printf "%d", t * hz }' "$WORK/times"
}
now_ms() { date +%s%3N; }
foreign_pct() { # foreign_pct MACHINE0 OWN0 SERVER0 MS0
  local m1 o1 s1 ms1
  m1=$(machine_ticks); o1=$(own_ticks); s1=$(pid_ticks "$SERVER_PID"); ms1=$(now_ms)
  awk -v dm=$((m1 - $1)) -v do_=$((o1 - $2)) -v ds=$((s1 - $3)) -v ms=$((ms1 - $4)) -v hz="$HZ" \
    'BEGIN { f = dm - do_ - ds; if (f < 0) f = 0; printf "%.0f", (ms > 0 ? 100 * f / hz / (ms / 1000) : 0) }'
}
FOREIGN_STEPS=0

BUSY_BEFORE=$(cpu_busy_pct)
if [ "$BUSY_BEFORE" -gt 10 ]; then
  log "warning: the CPUs are already ${BUSY_BEFORE}% busy with other work; the figures will be low and noisy"
fi

log "DHCP benchmark: servers [$SERVERS], $MACS MACs, ${PERIOD}s per step, stop above $MAX_LOSS% loss"
log "server ns $NS_S ($SERVER_ADDR, CPU $SERVER_CPU), client ns $NS_C ($CLIENT_ADDR, CPU $CLIENT_CPU)"
for s in $SERVERS; do bench_server "$s"; done

# ---------------------------------------------------------------- table
echo
echo "DHCPv4 DORA throughput (perfdhcp as relay, $MACS MACs, ${PERIOD}s steps, loss <= $MAX_LOSS%), $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-8s %12s %8s %8s  %s\n' "server" "leases/s" "loss %" "vs Kea" "series ended by"
kea_rate=${BEST_RATE[kea]:-0}
for s in $SERVERS; do
  if [ "${STATUS[$s]}" = failed ] || [ -z "${BEST_RATE[$s]:-}" ]; then
    printf '%-8s %12s %8s %8s  %s\n' "$s" "failed" "-" "-" "${WHY[$s]:-failed}"
    continue
  fi
  if [ "${BEST_RATE[$s]}" -eq 0 ]; then
    printf '%-8s %12s %8s %8s  %s\n' "$s" "none" "-" "-" "${STATUS[$s]} (no step within the bound)"
    continue
  fi
  ratio="-"
  [ "$kea_rate" -gt 0 ] && ratio=$(awk -v a="${BEST_RATE[$s]}" -v k="$kea_rate" 'BEGIN { printf "%.2fx", a / k }')
  printf '%-8s %12s %8s %8s  %s\n' "$s" "${BEST_RATE[$s]}" "${BEST_LOSS[$s]}" "$ratio" "${STATUS[$s]}"
done
if [ "$FOREIGN_STEPS" -gt 0 ]; then
  echo "WARNING: $FOREIGN_STEPS step(s) marked * ran while other work used more than $FOREIGN_WARN% of a CPU;" \
    "rerun on an idle machine before trusting these figures."
fi
echo "(elapsed $((SECONDS - START)) s; server on CPU $SERVER_CPU, perfdhcp on CPU $CLIENT_CPU;" \
  "other work before the run: ${BUSY_BEFORE}% CPU, load average now $(cut -d' ' -f1-3 /proc/loadavg))"
