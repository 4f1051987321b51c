#!/usr/bin/env bash
# A floating address (issue 20) measured: shoal's built-in one next to keepalived, the tool Swarm
# users run today. Three namespaced nodes (bench/lib/netns.sh: fbn1..fbn3, 10.95.0.1..3 on a
# bridge fbbr0 in namespace fbnhub); the floating address is 10.95.0.200/24; the client is the hub
# namespace (10.95.0.254 on the bridge). Each node answers HTTP on port 8080:
#   keepalived  `busybox httpd -f -p 8080` in each node, answering the node's name; one keepalived
#               per node (VRRP on eth0, virtual_router_id 51, state BACKUP everywhere, priorities
#               100/90/80, nopreempt unless K_NOPREEMPT=0, advert_int K_ADVERT: 0.1 needs VRRPv3,
#               chosen by itself), `keepalived -n -l -D -G -P`, its files under the node's data dir.
#   shoal       3 managers (bench/lib/shoal.sh), a service of 3 replicas of shoal-test/web
#               `--publish 8080:80`, and `shoal floating-ip add 10.95.0.200/24`.
# The client launches a request every REQ_INTERVAL s (0.02), each allowed REQ_TIMEOUT s (0.1), new
# connections each, concurrently (a small Python asyncio loop: resolution REQ_INTERVAL, not the
# timeout), and logs "start end ok answer" per request. The holder is the node whose eth0 has the
# address (`ip -n NODE -br addr show eth0`). Parts:
#   f  failover (power loss)  cut the holder off (ns_cut: its link down at the bridge) and kill -9
#                 its daemon at the same instant (the kill first, then the cut: keepalived, still
#                 alive, would see its link go down and drop the address; keepalived: its parent and
#                 VRRP processes; shoal: the daemon, its containers removed right after). Seconds
#                 from the kill to the first successful answer to a request started after the cut
#                 (one started just before may still get the old holder's answer). ROUNDS rounds;
#                 in between the node is healed and restarted (keepalived: the address it kept is
#                 removed by hand first, as nothing else removes it; shoal: it must go by itself,
#                 waited for up to STALE_WAIT s and reported) and the client must succeed
#                 steadily, SETTLE s.
#   m  planned move  keepalived: SIGTERM to the holder's keepalived (what `systemctl stop` does);
#                 shoal: `docker node update --availability drain` of the holder (then active
#                 again). Seconds from then until the outage ended: the first success that started
#                 after the last failed request (0 when no request failed); keepalived also: the
#                 first answer from another node. MOVES rounds.
#   p  partitions  for each of PARTITIONS: cut (link down at the bridge), drop (frames to and from
#                 the holder's port dropped by nftables in the hub's bridge, link up), kill (kill -9
#                 of the holder's daemon alone, the node stays on the network): for PART_SECS s
#                 (30) every SAMPLE s (0.05) every node's addresses: seconds during which 2+ nodes
#                 held the address, the longest such stretch, and seconds with no holder.
# Goals (issue 20): failover median < 1 s, never over 2 s; planned move < 0.3 s; partitions: never
# two holders.
#
# Usage: flock -o /tmp/shoal-e2e.lock bench/floating-ip.sh [keepalived] [shoal]   (as root; both
#                                        by default, keepalived first)
#        K_ADVERT=0.1 bench/floating-ip.sh keepalived     keepalived at its fastest (VRRPv3)
#        PARTS=f ROUNDS=3 bench/floating-ip.sh shoal       a quick look at shoal's failover
#        bench/floating-ip.sh --cleanup   remove what a killed (kill -9) run left behind
# Exit status 1 when a side or a part could not be measured (a FAILED line), not for a missed goal.
# Environment:
#   PARTS=fmp  ROUNDS=10  MOVES=5  PARTITIONS="cut drop kill"  PART_SECS=30  SAMPLE=0.05
#   REQ_INTERVAL=0.02  REQ_TIMEOUT=0.1  SETTLE=3 (s of steady answers before each round)
#   STALE_WAIT=5  TIMEOUT=60 (any single wait)
#   K_ADVERT=1  K_NOPREEMPT=1  K_VRRP_VERSION (2 when K_ADVERT is a whole number, else 3)
#   S_RM_TASKS=1: shoal's failover removes the dead node's containers (`docker rm -f`, which takes
#   the engine a minute per round: it waits for the dead daemon's network plugin); 0 leaves them
#   SHOAL=target/release/shoal (built with `cargo build --release -p shoal` when missing; BUILD=0
#   skips the build); SHOAL_LOG=info; KEEP_LOGS=<dir> keeps the daemons' and keepalived's logs
#   NS_PREFIX=fbn NS_SUBNET=10.95.0 NS_BRIDGE=fbbr0 (the suite uses 10.99.0.x, cluster.sh 10.97.0.x,
#   swarm-peer.sh 10.98.0.x, volumes.sh 10.96.0.x)
# Needs: keepalived, busybox, python3, nft; for shoal shoal-test/web in the host engine
# (scripts/build-test-images.sh). Sends nothing outside the namespaces (keepalived runs only in
# the nodes' namespaces, never on the host's interfaces); removes everything it created on exit,
# Ctrl-C included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
NS_PREFIX=${NS_PREFIX:-fbn}
NS_SUBNET=${NS_SUBNET:-10.95.0}
NS_BRIDGE=${NS_BRIDGE:-fbbr0}
. bench/lib/netns.sh
. bench/lib/shoal.sh

PARTS=${PARTS:-fmp}
ROUNDS=${ROUNDS:-10}
MOVES=${MOVES:-5}
PARTITIONS=${PARTITIONS:-cut drop kill}
PART_SECS=${PART_SECS:-30}
SAMPLE=${SAMPLE:-0.05}
REQ_INTERVAL=${REQ_INTERVAL:-0.02}
REQ_TIMEOUT=${REQ_TIMEOUT:-0.1}
SETTLE=${SETTLE:-3}
STALE_WAIT=${STALE_WAIT:-5}
TIMEOUT=${TIMEOUT:-60}
WAIT_POLL=0.1
MEDIAN_DECIMALS=3
S_RM_TASKS=${S_RM_TASKS:-1}
K_ADVERT=${K_ADVERT:-1}
K_NOPREEMPT=${K_NOPREEMPT:-1}
case $K_ADVERT in *.*) K_VRRP_VERSION=${K_VRRP_VERSION:-3} ;; *) K_VRRP_VERSION=${K_VRRP_VERSION:-2} ;; esac
BUILD=${BUILD:-1}
SHOAL=${SHOAL:-${CARGO_TARGET_DIR:-$ROOT/target}/release/shoal}
WEB_IMAGE=shoal-test/web
WEB_SVC=fipweb
NODES=3
PORT=8080
VIP=$NS_SUBNET.200
CLIENT_ADDR=$NS_SUBNET.254
NFT_TABLE=fipbench                   # in the hub namespace's bridge family, for "drop"

has_part() { case $PARTS in *"$1"*) return 0 ;; esac; return 1; }
# Seconds with 3 decimals (the lib's since/diff_s print 2).
since3() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'; }
maxof() { sort -n | tail -1; }
goal() { awk -v v="$1" -v g="$2" 'BEGIN { if (v == "" || v == "n/a") print "n/a"; else print (v + 0 < g + 0 ? "met" : "not met") }'; }

# ----------------------------------------------------------------------------------------------
# The address, the client
# ----------------------------------------------------------------------------------------------
# Indexes of the nodes whose eth0 carries the address, space-separated.
holders() {
  local i out=
  for ((i = 1; i <= NODES; i++)); do holds "$i" && out="$out $i"; done
  echo "${out# }"
}
holds() { [[ "$(ip -n "$(ns_name "$1")" -br -4 addr show dev eth0 2>/dev/null)" == *" $VIP/"* ]]; }
one_holder() { local h; h=$(holders); [ -n "$h" ] && [[ "$h" != *" "* ]]; }
# The single holder's index, or nothing.
the_holder() { local h; h=$(holders); [ -n "$h" ] && [[ "$h" != *" "* ]] && echo "$h"; }

# The client (runs in the hub namespace): a new request every INTERVAL s, concurrently, each
# allowed TIMEOUT s; one line per request: "start end ok answer" (epoch seconds; ok 1 for an
# HTTP 200; answer: the body's first word, or the error's name).
CLIENT_PY='
import asyncio, sys, time
addr, port, interval, timeout, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
f = open(out, "a", buffering=1)
req = b"GET / HTTP/1.0\r\nHost: fip\r\n\r\n"
async def fetch():
    r, w = await asyncio.open_connection(addr, port)
    try:
        w.write(req)
        return await r.read()   # to EOF: httpd closes after its answer
    finally:
        w.close()
async def one():
    t0 = time.time()
    ok, ans = 0, "-"
    try:
        data = await asyncio.wait_for(fetch(), timeout)
        head, _, body = data.partition(b"\r\n\r\n")
        if head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]:
            ok = 1
            ans = (body.split() or [b"-"])[0].decode(errors="replace")
        else:
            ans = "http-" + head.split(b"\r\n", 1)[0].decode(errors="replace").replace(" ", "_")[:40]
    except Exception as e:
        ans = type(e).__name__
    f.write("%.6f %.6f %d %s\n" % (t0, time.time(), ok, ans))
async def main():
    tasks = set()
    nxt = time.monotonic()
    while True:
        t = asyncio.ensure_future(one())
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        nxt += interval
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))
asyncio.run(main())
'
PYTHON=
CLIENT_PID=
CLIENT_LOG=

# client_start FILE: starts the client logging to FILE.
client_start() {
  CLIENT_LOG=$1
  : > "$CLIENT_LOG"
  nsenter --net="/run/netns/$(ns_hub)" -- "$PYTHON" -c "$CLIENT_PY" "$VIP" "$PORT" "$REQ_INTERVAL" \
    "$REQ_TIMEOUT" "$CLIENT_LOG" 2>>"$NS_DATA/client.err" &
  CLIENT_PID=$!
  echo "$CLIENT_PID" >> "$NS_STATE/pids"
}
client_stop() {
  [ -n "$CLIENT_PID" ] || return 0
  kill "$CLIENT_PID" 2>/dev/null
  wait "$CLIENT_PID" 2>/dev/null
  CLIENT_PID=
}
# The client's last N (10) requests all succeeded.
client_steady() {
  local n=${1:-10}
  [ "$(wc -l < "$CLIENT_LOG")" -ge "$n" ] && [ "$(tail -n "$n" "$CLIENT_LOG" | awk '$3 != 1' | wc -l)" = 0 ]
}
# "end answer" of the first success of a request started at or after $1 and answered by someone
# other than $2 (an answer; "" for anyone).
first_success() {
  awk -v t="$1" -v ex="$2" '$1 >= t && $3 == 1 && (ex == "" || $4 != ex) { print $2, $4; exit }' "$CLIENT_LOG"
}
# Requests started in [$1, $2]: "failed total outage_end", outage_end the end of the first success
# started after the last failure (empty when nothing failed, "none" when nothing succeeded after).
client_window() {
  awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { n++; s[n] = $1; e[n] = $2; ok[n] = $3
      if ($3 != 1) { f++; if ($1 > lf) lf = $1 } }
    END { out = ""
      if (f > 0) { out = "none"; best = -1
        for (k = 1; k <= n; k++) if (ok[k] == 1 && s[k] > lf && (best < 0 || e[k] < best)) best = e[k]
        if (best >= 0) out = sprintf("%.6f", best) }
      printf "%d %d %s\n", f, n, out }' "$CLIENT_LOG"
}
# Waits until one node holds the address and the client's last requests all succeeded, and still
# so SETTLE seconds later (a healed partition may make the address move once more: then again).
wait_steady() {
  local k
  for ((k = 1; k <= 5; k++)); do
    if [ "$X" = shoal ]; then
      wait_until cluster_healthy || { log "the shoal cluster is not healthy after $TIMEOUT s"; nodes_view >&2; return 1; }
    fi
    wait_until one_holder || { log "not exactly one holder after $TIMEOUT s: holders '$(holders)'"; return 1; }
    wait_until client_steady 10 || { log "the client does not succeed steadily (last: $(tail -n 3 "$CLIENT_LOG" | tr '\n' ';'))"; return 1; }
    sleep "$SETTLE"
    one_holder && client_steady 10 && return 0
    log "not steady after $SETTLE s (holders '$(holders)', last requests: $(tail -n 10 "$CLIENT_LOG" | awk '{ printf "%s%s", (NR > 1 ? " " : ""), ($3 == 1 ? $4 : "FAIL:" $4) }')): waiting again"
  done
  return 1
}

# ----------------------------------------------------------------------------------------------
# Partition helpers
# ----------------------------------------------------------------------------------------------
# Drops every frame to and from node i's port of the bridge (its link stays up): a table in the hub
# namespace's bridge family (it goes with the namespace too).
drop_node() {
  local v
  v=$(_ns_veth "$1")
  ip netns exec "$(ns_hub)" nft -f - <<EOF
table bridge $NFT_TABLE {
  chain fipfwd { type filter hook forward priority -200; policy accept; iifname "$v" drop; oifname "$v" drop; }
  chain fipin { type filter hook input priority -200; policy accept; iifname "$v" drop; }
  chain fipout { type filter hook output priority -200; policy accept; oifname "$v" drop; }
}
EOF
}
undrop() { ip netns exec "$(ns_hub)" nft delete table bridge "$NFT_TABLE" 2>/dev/null; return 0; }

# sample_holders SECS FILE: every SAMPLE s for SECS s, "epoch count holders" lines in FILE (times
# in microseconds in bash: a sample costs only the `ip` calls).
sample_holders() {
  local secs=$1 file=$2 t0 step next end h c d n
  : > "$file"
  step=$(awk -v s="$SAMPLE" 'BEGIN { printf "%d", s * 1000000 }')
  t0=${EPOCHREALTIME/./}
  end=$((t0 + secs * 1000000))
  next=$t0
  while :; do
    h=
    c=0
    for ((n = 1; n <= NODES; n++)); do holds "$n" && { h="$h,$n"; c=$((c + 1)); }; done
    echo "$EPOCHREALTIME $c ${h#,}" >> "$file"
    next=$((next + step))
    [ "$next" -ge "$end" ] && break
    d=$((next - ${EPOCHREALTIME/./}))
    if [ "$d" -gt 0 ]; then
      sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
    elif [ "$d" -lt "-$step" ]; then
      next=${EPOCHREALTIME/./}   # fell behind by more than a period: keep the pace from now
    fi
  done
}
# sample_arp SECS FILE: for SECS s, one ARP request for the address from the client at a time
# (`arping`, 50 ms for answers), "epoch count macs" lines in FILE: how many nodes ANSWER for it
# (an address left on a dead node's interface that no longer answers is not a holder to a client).
sample_arp() {
  local secs=$1 file=$2 end macs
  : > "$file"
  end=$(( ${EPOCHREALTIME/./} + secs * 1000000 ))
  while [ "${EPOCHREALTIME/./}" -lt "$end" ]; do
    macs=$(ip netns exec "$(ns_hub)" arping -c 1 -w 0.05 -i "$NS_BRIDGE" "$VIP" 2>/dev/null \
      | awk '/bytes from/ { print $4 }' | sort -u | paste -sd, -)
    echo "$EPOCHREALTIME $( [ -n "$macs" ] && echo "$macs" | tr ',' '\n' | wc -l || echo 0) $macs" >> "$file"
  done
}

# "double longest none samples" from a sample file: seconds with 2+ holders (each sample counts
# until the next one), the longest such stretch, seconds with no holder, number of samples.
sample_stats() {
  awk 'NR > 1 { dt = $1 - pt
         if (pc >= 2) { dbl += dt; run += dt; if (run > longest) longest = run } else run = 0
         if (pc == 0) none += dt }
       { pt = $1; pc = $2 }
       END { printf "%.2f %.2f %.2f %d\n", dbl, longest, none, NR }' "$1"
}

# ----------------------------------------------------------------------------------------------
# The two implementations: X=keepalived or X=shoal
# ----------------------------------------------------------------------------------------------
K_VERSION=$(keepalived --version 2>&1 | awk 'NR == 1 { print $2 }')
k_dir() { echo "$(ns_data_dir "$1")/keepalived"; }
k_pid() { cat "$(k_dir "$1")/keepalived.pid" 2>/dev/null; }
k_vrrp_pid() { cat "$(k_dir "$1")/vrrp.pid" 2>/dev/null; }
# Whether pid $1 is a live (not zombie) keepalived.
k_running() { [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = keepalived ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
k_alive() { k_running "$(k_pid "$1")"; }

k_conf() {
  local i=$1
  cat <<EOF
global_defs {
  router_id $(ns_name "$i")
  vrrp_version $K_VRRP_VERSION
}
vrrp_instance fipbench {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority $((110 - 10 * i))
  advert_int $K_ADVERT
$([ "$K_NOPREEMPT" = 1 ] && echo "  nopreempt")
  virtual_ipaddress {
    $VIP/24 dev eth0
  }
}
EOF
}

# Starts keepalived in node i (only there: nsenter into its network namespace).
k_start() {
  local i=$1 d
  d=$(k_dir "$i")
  mkdir -p "$d"
  k_conf "$i" > "$d/keepalived.conf"
  rm -f "$d/keepalived.pid" "$d/vrrp.pid"
  echo "---- started at $(date '+%F %T.%N') ----" >> "$d/keepalived.log"
  ns_exec_bg "$i" keepalived -n -l -D -G -P -f "$d/keepalived.conf" -p "$d/keepalived.pid" \
    -r "$d/vrrp.pid" >> "$d/keepalived.log" 2>&1
  wait_until eval "[ -n \"\$(k_vrrp_pid $i)\" ]" || { log "keepalived of node $i did not start; tail of $d/keepalived.log:"; tail -n 20 "$d/keepalived.log" >&2; return 1; }
}
# kill -9 of node i's keepalived: the VRRP process and its parent at once (the VRRP process alone
# would be restarted by the parent, the parent alone would make it shut down cleanly).
k_kill9() {
  local p c
  p=$(k_pid "$1")
  c=$(k_vrrp_pid "$1")
  [ -n "$p$c" ] && kill -KILL $c $p 2>/dev/null
  return 0
}
k_term() { local p; p=$(k_pid "$1"); [ -n "$p" ] && kill -TERM "$p"; }
k_gone() { ! k_alive "$1" && ! k_running "$(k_vrrp_pid "$1")"; }
# Cleanup hook: stop every node's keepalived (SIGTERM, then -9), check none is left.
k_cleanup_all() {
  local name i
  for name in $(ls /run/netns 2>/dev/null | grep -E "^${NS_PREFIX}[0-9]+\$"); do
    i=${name#"$NS_PREFIX"}
    k_alive "$i" && k_term "$i"
  done
  for name in $(ls /run/netns 2>/dev/null | grep -E "^${NS_PREFIX}[0-9]+\$"); do
    i=${name#"$NS_PREFIX"}
    TIMEOUT=5 wait_until k_gone "$i" || { log "keepalived of node $i did not stop on SIGTERM: kill -9"; k_kill9 "$i"; }
  done
  return 0
}
httpd_start() {
  local i=$1 d
  d="$(ns_data_dir "$i")/www"
  mkdir -p "$d"
  ns_name "$i" > "$d/index.html"
  ns_exec_bg "$i" busybox httpd -f -p "$PORT" -h "$d" >> "$(ns_data_dir "$i")/httpd.log" 2>&1
  echo "$NS_LAST_PID" > "$(ns_data_dir "$i")/httpd.pid"
}
httpd_stop_all() {
  local i p
  for ((i = 1; i <= NODES; i++)); do
    p=$(cat "$(ns_data_dir "$i")/httpd.pid" 2>/dev/null)
    [ -n "$p" ] && kill "$p" 2>/dev/null
    rm -f "$(ns_data_dir "$i")/httpd.pid"
  done
  return 0
}

# Per implementation: x_kill9 i (the daemon dies, no goodbye), x_restore i (the node is back, its
# daemon running and part of the group again), x_planned i (the planned move away from i),
# x_after_planned i, x_answer i (node i's answer, to tell who answered; empty: cannot tell).
x_kill9() { if [ "$X" = shoal ]; then sh_kill_daemon "$1"; else k_kill9 "$1"; fi; }
x_restore() {
  if [ "$X" = shoal ]; then
    sh_alive "$1" || restart_and_rejoin "$1"
  else
    k_alive "$1" || k_start "$1"
  fi
}
x_planned() {
  if [ "$X" = shoal ]; then
    local m=1
    [ "$m" = "$1" ] && m=2
    sh "$m" node update --availability drain "node-$1" >/dev/null
  else
    k_term "$1"
  fi
}
x_after_planned() {
  if [ "$X" = shoal ]; then
    local m=1
    [ "$m" = "$1" ] && m=2
    sh "$m" node update --availability active "node-$1" >/dev/null
  else
    wait_until k_gone "$1" && k_start "$1"
  fi
}
x_answer() { [ "$X" = keepalived ] && ns_name "$1"; }
x_daemon() { if [ "$X" = shoal ]; then echo "shoal"; else echo "keepalived"; fi; }

# The address node i kept after its daemon died (at epoch $2): shoal's must go by itself (its
# nftables guard / valid_lft); keepalived's never does, so it is removed by hand. Prints how it went.
clear_stale() {
  local i=$1 t0=$2 k
  holds "$i" || { echo "gone"; return 0; }
  if [ "$X" = shoal ]; then
    for ((k = 0; k < STALE_WAIT * 20; k++)); do
      holds "$i" || { echo "went by itself, $(since3 "$t0") s after the kill"; return 0; }
      sleep 0.05
    done
  fi
  ip -n "$(ns_name "$i")" addr del "$VIP/24" dev eth0 2>/dev/null
  echo "still there $(since3 "$t0") s after the kill: removed by hand"
}

# ----------------------------------------------------------------------------------------------
# f: failover
# ----------------------------------------------------------------------------------------------
failover_round() {
  local r=$1 h t0 tc t1 secs w stale e= rmpid who
  wait_steady || return 1
  h=$(the_holder)
  [ -n "$h" ] || return 1
  local lnote=
  [ "$X" = shoal ] && [ "$(leader)" = "$h" ] && lnote=" (the raft leader too)"
  # The daemon first: a live keepalived would see its link go down and remove the address. Timed
  # from before the kill; only requests started after the cut count (one started just before it
  # may still get the old holder's answer).
  t0=$(now)
  x_kill9 "$h"
  ns_cut "$h"
  tc=$(now)
  rmpid=
  # Power loss: its tasks go too.
  [ "$X" = shoal ] && [ "$S_RM_TASKS" = 1 ] && { engine_rm_node "$(node_id_of "$h")" & rmpid=$!; }
  t1=
  while [ -z "$t1" ]; do
    read -r t1 who <<< "$(first_success "$tc" "$(x_answer "$h")")"
    [ -n "$t1" ] && break
    if [ "$(since "$t0" | cut -d. -f1)" -ge "$TIMEOUT" ]; then
      log "round $r: no answer within $TIMEOUT s of cutting node-$h off (holders now: '$(holders)')"
      e=1
      break
    fi
    sleep 0.02
  done
  if [ -z "$e" ]; then
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }')
    sleep 0.3
    w=$(client_window "$tc" "$t1")
  fi
  stale=$(clear_stale "$h" "$t0")
  log "round $r: cut off node-$h$lnote and killed its $(x_daemon) (-9): first answer after ${secs:-?} s from ${who:-?} (${w%% *} requests failed); now held by '$(holders)'; node-$h's address: $stale"
  if [ -n "$rmpid" ]; then
    # (docker rm -f of a dead node's containers can take a minute: the engine waits for the dead
    # daemon's network plugin)
    wait "$rmpid"
    log "  node-$h's containers removed (docker rm -f) $(since "$t0") s after the kill"
  fi
  ns_heal "$h"
  x_restore "$h" || return 1
  [ -z "$e" ] || return 1
  ROUND_SECS=$secs
}

run_failover() {
  local r out=() med max
  log "$X failover: $ROUNDS rounds of cutting the holder off and killing its $(x_daemon) (-9)"
  for ((r = 1; r <= ROUNDS; r++)); do
    failover_round "$r" || { log "failover round $r failed"; break; }
    out+=("$ROUND_SECS")
  done
  [ ${#out[@]} -gt 0 ] || return 1
  med=$(printf '%s\n' "${out[@]}" | median)
  max=$(printf '%s\n' "${out[@]}" | maxof)
  R_FAILOVER="failover (holder cut off + its $(x_daemon) killed -9, to the first answer): median $med s, max $max s over ${#out[@]} rounds (all: ${out[*]}); goal median < 1 s: $(goal "$med" 1), max < 2 s: $(goal "$max" 2)"
  [ ${#out[@]} = "$ROUNDS" ] || R_FAILOVER="$R_FAILOVER (only ${#out[@]} of $ROUNDS rounds completed: FAILED, see the log above)"
}

# ----------------------------------------------------------------------------------------------
# m: planned move
# ----------------------------------------------------------------------------------------------
move_round() {
  local r=$1 h t0 t1 tend nh w f n oe secs other
  wait_steady || return 1
  h=$(the_holder)
  [ -n "$h" ] || return 1
  t0=$(now)
  x_planned "$h" || { log "move $r: the planned move of node-$h failed"; return 1; }
  # Until another node holds the address and the client succeeded steadily for a while.
  wait_until eval 'nh=$(the_holder); [ -n "$nh" ] && [ "$nh" != "$h" ]' ||
    { log "move $r: the address did not move off node-$h (holders: '$(holders)')"; x_after_planned "$h"; return 1; }
  sleep 1
  wait_until client_steady 20 || { log "move $r: no steady answers after the move"; x_after_planned "$h"; return 1; }
  tend=$(now)
  sleep 0.3
  read -r f n oe <<< "$(client_window "$t0" "$tend")"
  if [ -z "$oe" ]; then
    secs=0.000
  elif [ "$oe" = none ]; then
    log "move $r: no success after the last failure"
    x_after_planned "$h"
    return 1
  else
    secs=$(awk -v a="$t0" -v b="$oe" 'BEGIN { printf "%.3f\n", b - a }')
  fi
  other=
  if [ -n "$(x_answer "$h")" ]; then
    read -r t1 _ <<< "$(first_success "$t0" "$(x_answer "$h")")"
    [ -n "$t1" ] && other=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }')
    MOVE_OTHER+=("$other")
  fi
  log "move $r: node-$h -> node-$(the_holder): outage ended after $secs s ($f of $n requests failed)${other:+; first answer from another node after $other s}"
  x_after_planned "$h" || return 1
  ROUND_SECS=$secs
}

run_move() {
  local r out=() med max what
  MOVE_OTHER=()
  if [ "$X" = shoal ]; then what="docker node update --availability drain of the holder"; else what="SIGTERM to the holder's keepalived"; fi
  log "$X planned move: $MOVES rounds of $what"
  for ((r = 1; r <= MOVES; r++)); do
    move_round "$r" || { log "move $r failed"; break; }
    out+=("$ROUND_SECS")
  done
  [ ${#out[@]} -gt 0 ] || return 1
  med=$(printf '%s\n' "${out[@]}" | median)
  max=$(printf '%s\n' "${out[@]}" | maxof)
  R_MOVE="planned move ($what), to the end of the client's outage: median $med s, max $max s over ${#out[@]} (all: ${out[*]}); goal < 0.3 s: $(goal "$max" 0.3) (max), $(goal "$med" 0.3) (median)"
  [ ${#MOVE_OTHER[@]} -gt 0 ] && R_MOVE="$R_MOVE; first answer from another node: median $(printf '%s\n' "${MOVE_OTHER[@]}" | median) s (all: ${MOVE_OTHER[*]})"
  [ ${#out[@]} = "$MOVES" ] || R_MOVE="$R_MOVE (only ${#out[@]} of $MOVES moves completed: FAILED, see the log above)"
  return 0
}

# ----------------------------------------------------------------------------------------------
# p: partitions
# ----------------------------------------------------------------------------------------------
partition_one() {
  local kind=$1 h file stats dbl longest none n stale= tk lastheld
  wait_steady || return 1
  h=$(the_holder)
  [ -n "$h" ] || return 1
  file="$NS_DATA/samples.$X.$kind"
  case $kind in
    cut) ns_cut "$h" ;;
    drop) drop_node "$h" || { log "nft rule failed"; return 1; } ;;
    kill) tk=$(now); x_kill9 "$h" ;;
  esac
  sample_arp "$PART_SECS" "$file.arp" &
  local arp_pid=$!
  sample_holders "$PART_SECS" "$file"
  wait "$arp_pid"
  case $kind in
    cut) ns_heal "$h" ;;
    drop) undrop ;;
    kill) stale=$(clear_stale "$h" "$tk"); x_restore "$h" || return 1 ;;
  esac
  read -r dbl longest none n <<< "$(sample_stats "$file")"
  local firstdbl snote=
  [ -n "${stale:-}" ] && snote="; node-$h's address: $stale"
  # When the partitioned (or killed) holder was last seen holding the address.
  lastheld=$(awk -v h="$h" 'NR == 1 { t = $1 } { n = split($3, a, ","); for (k = 1; k <= n; k++) if (a[k] == h) last = $1 }
    END { if (last == "") print "not in any sample"; else printf "at %.2f s", last - t }' "$file")
  snote="$snote; node-$h last seen holding it: $lastheld"
  firstdbl=$(awk 'NR == 1 { t = $1 } $2 >= 2 { printf "%.2f", $1 - t; exit }' "$file")
  log "partition '$kind' of holder node-$h for $PART_SECS s ($n samples): 2+ holders during $dbl s (longest $longest s${firstdbl:+, first seen after $firstdbl s}), no holder during $none s; holders seen: $(awk '{ print $3 }' "$file" | sort | uniq -c | awk '{ printf "%s%s x%d", (NR > 1 ? ", " : ""), ($2 == "" ? "none" : $2), $1 }')$snote"
  local adbl alongest anone an
  read -r adbl alongest anone an <<< "$(sample_stats "$file.arp")"
  log "partition '$kind' of holder node-$h: 2+ nodes answering ARP during $adbl s (longest $alongest s), none answering $anone s ($an ARP probes)"
  R_PART+=("$kind: 2+ holders $dbl s (longest $longest s), none $none s; 2+ answering ARP $adbl s")
}

run_partitions() {
  local k
  R_PART=()
  log "$X partitions of the holder ($PARTITIONS), $PART_SECS s each, addresses sampled every $SAMPLE s"
  for k in $PARTITIONS; do partition_one "$k" || { log "partition '$k' failed"; R_PART+=("$k: FAILED"); }; done
  [ ${#R_PART[@]} -gt 0 ] || return 1
  R_PARTITIONS="partitions of the holder, $PART_SECS s each, every node's addresses every $SAMPLE s: $(printf '%s; ' "${R_PART[@]}")goal: never two holders"
}

# The result lines of the parts run, under the heading $1.
side_results() {
  RESULTS+=("$1:")
  has_part f && RESULTS+=("  ${R_FAILOVER:-failover: FAILED, see the log above}")
  has_part m && RESULTS+=("  ${R_MOVE:-planned move: FAILED, see the log above}")
  has_part p && RESULTS+=("  ${R_PARTITIONS:-partitions: FAILED, see the log above}")
  return 0
}

run_parts() {
  R_FAILOVER= R_MOVE= R_PARTITIONS=
  client_start "$NS_DATA/client.$X.log"
  has_part f && { run_failover || log "$X failover: no result"; }
  has_part m && { run_move || log "$X planned move: no result"; }
  has_part p && { run_partitions || log "$X partitions: no result"; }
  client_stop
}

# ----------------------------------------------------------------------------------------------
keepalived_side() {
  local i
  X=keepalived
  K_DESC="keepalived $K_VERSION, advert_int $K_ADVERT (VRRPv$K_VRRP_VERSION), state BACKUP, priorities 100/90/80$([ "$K_NOPREEMPT" = 1 ] && echo ", nopreempt")"
  log "$K_DESC"
  for ((i = 1; i <= NODES; i++)); do httpd_start "$i"; done
  for ((i = 1; i <= NODES; i++)); do k_start "$i" || return 1; done
  wait_until one_holder || { log "keepalived: no single holder (holders: '$(holders)')"; return 1; }
  log "keepalived: node-$(the_holder) holds $VIP"
  run_parts
  k_cleanup_all
  httpd_stop_all
  # keepalived removes its address when it stops: check, and never leave one behind.
  for ((i = 1; i <= NODES; i++)); do
    holds "$i" && { log "node-$i still has $VIP after keepalived stopped: removing it"; ip -n "$(ns_name "$i")" addr del "$VIP/24" dev eth0; }
  done
  side_results "$K_DESC"
}

svc_running() {
  [ "$(sh "$(a_manager)" service ps "$WEB_SVC" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null | grep -c '^Running')" = "$1" ]
}

shoal_side() {
  local out
  X=shoal
  if [ ! -x "$SHOAL" ] && [ "$BUILD" = 1 ]; then
    log "building shoal: cargo build --release -p shoal"
    cargo build --release -p shoal >&2 || { log "build failed"; }
  fi
  [ -x "$SHOAL" ] || { log "shoal: no binary at $SHOAL (set SHOAL=...)"; RESULTS+=("shoal: FAILED: no binary at $SHOAL"); return 1; }
  if ! engine image inspect "$WEB_IMAGE" >/dev/null 2>&1; then
    log "building the test images in the host engine"
    bash scripts/build-test-images.sh || return 1
  fi
  S_DESC="shoal $("$SHOAL" --version 2>/dev/null | awk '{ print $2 }'), 3 managers, $WEB_SVC: 3 x $WEB_IMAGE --publish $PORT:80"
  log "$S_DESC"
  form_cluster 3 3 || { RESULTS+=("shoal: FAILED: the cluster did not form"); return 1; }
  sh 1 service create --detach --name "$WEB_SVC" --replicas 3 --publish "$PORT:80" --no-resolve-image \
    "$WEB_IMAGE" >/dev/null || { RESULTS+=("shoal: FAILED: service create"); return 1; }
  wait_until svc_running 3 || { log "shoal: $WEB_SVC did not reach 3 running"; RESULTS+=("shoal: FAILED: the service did not run"); return 1; }
  # The routing mesh through a node's own address, for the record (the floating address must do
  # the same).
  if wait_until ip netns exec "$(ns_hub)" curl -sf -m 1 -o /dev/null "http://$(ns_ip 1):$PORT/"; then
    log "shoal: http://$(ns_ip 1):$PORT/ answers (the routing mesh on a node's address)"
  else
    log "shoal: http://$(ns_ip 1):$PORT/ does not answer after $TIMEOUT s (the routing mesh itself?)"
  fi
  if ! out=$("$SHOAL" floating-ip add "$VIP/24" -H "$(sh_host 1)" 2>&1); then
    log "shoal: 'shoal floating-ip add $VIP/24' FAILED: $out"
    RESULTS+=("shoal: FAILED: \`shoal floating-ip add $VIP/24\`: $out (is the floating address feature in this build?)")
    return 1
  fi
  log "shoal: floating-ip add: $out"
  if ! wait_until one_holder; then
    log "shoal: FAILED: no node holds $VIP $TIMEOUT s after floating-ip add (holders: '$(holders)'); shoal floating-ip ls:"
    "$SHOAL" floating-ip ls -H "$(sh_host 1)" >&2
    RESULTS+=("shoal: FAILED: the address was added but no node holds it after $TIMEOUT s (agent side not wired yet?)")
    return 1
  fi
  log "shoal: node-$(the_holder) holds $VIP"
  "$SHOAL" floating-ip ls -H "$(sh_host 1)" 2>&1 | sed 's/^/    /' >&2
  if ! wait_until ip netns exec "$(ns_hub)" curl -sf -m 1 -o /dev/null "http://$VIP:$PORT/"; then
    log "shoal: FAILED: node-$(the_holder) holds $VIP but http://$VIP:$PORT/ does not answer after $TIMEOUT s"
    RESULTS+=("shoal: FAILED: the address is held but http://$VIP:$PORT/ does not answer (the routing mesh on the floating address?)")
    return 1
  fi
  run_parts
  side_results "$S_DESC"
}

keep_logs() {
  local i f
  [ -n "${KEEP_LOGS:-}" ] || return 0
  mkdir -p "$KEEP_LOGS"
  for ((i = 1; i <= NODES; i++)); do
    for f in daemon.log keepalived/keepalived.log; do
      [ -f "$(ns_data_dir "$i")/$f" ] && cp "$(ns_data_dir "$i")/$f" "$KEEP_LOGS/node$i-$(basename "$f")"
    done
  done
  cp "$NS_DATA"/client.*.log "$NS_DATA"/samples.* "$KEEP_LOGS/" 2>/dev/null
  return 0
}
cleanup_hooks() {
  # Hooks run last-registered first: logs, keepalived, the nft table, shoal.
  ns_on_cleanup sh_cleanup_all
  ns_on_cleanup undrop
  ns_on_cleanup k_cleanup_all
  ns_on_cleanup keep_logs
}

# ----------------------------------------------------------------------------------------------
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
if [ "${1:-}" = "--cleanup" ]; then
  cleanup_hooks
  ns_cleanup
  exit 0
fi
SIDES=()
for a in "$@"; do
  case $a in
    keepalived|shoal) SIDES+=("$a") ;;
    *) echo "unknown argument '$a' (keepalived, shoal, --cleanup, --help)" >&2; exit 2 ;;
  esac
done
[ ${#SIDES[@]} -gt 0 ] || SIDES=(keepalived shoal)

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if ls /run/netns 2>/dev/null | grep -qE "^${NS_PREFIX}([0-9]+|hub)\$"; then
  echo "namespaces ${NS_PREFIX}* exist already (another run?); bench/floating-ip.sh --cleanup removes them" >&2
  exit 1
fi
for c in keepalived busybox nft nsenter python3; do
  command -v "$c" >/dev/null || { echo "$c is missing" >&2; exit 1; }
done
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || exit 1

cleanup() {
  trap - EXIT INT TERM
  client_stop
  log "cleaning up"
  ns_cleanup
}
cleanup_hooks
trap cleanup EXIT
trap 'exit 130' INT TERM

ns_create "$NODES" || exit 1
ip -n "$(ns_hub)" addr add "$CLIENT_ADDR/24" dev "$NS_BRIDGE" || exit 1
RESULTS=()
for s in "${SIDES[@]}"; do
  case $s in
    keepalived) keepalived_side || { log "the keepalived side stopped early"; RESULTS+=("keepalived: FAILED, see the log above"); } ;;
    shoal) shoal_side || log "the shoal side stopped early" ;;
  esac
done

echo
echo "Floating address $VIP: $(date '+%F %H:%M'), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); 3 nodes, client in the hub namespace (a request every $REQ_INTERVAL s, each allowed $REQ_TIMEOUT s)"
printf '%s\n' "${RESULTS[@]}"
# Non-zero when a side or a part gave no result.
rc=0
for s in "${RESULTS[@]}"; do
  case $s in *FAILED*) rc=1 ;; esac
done
[ ${#RESULTS[@]} -gt 0 ] || rc=1
exit $rc
