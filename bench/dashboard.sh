#!/usr/bin/env bash
# The dashboard's and /metrics' numbers (issue 21). One namespaced node (bench/lib/netns.sh: dbn1,
# 10.94.0.1 on a bridge dbbr0 in namespace dbnhub) runs a manager (bench/lib/shoal.sh) with the
# default dashboard (127.0.0.1:9000) and metrics (127.0.0.1:9323) addresses, so both are on the
# node's loopback; every request to them (curl, chromedriver, chromium) runs inside the node's
# namespace. The load: SERVICES services of REPLICAS replicas of shoal-test/busybox, constrained
# to `node.labels.nowhere==1`, so their tasks stay PENDING (1,000 running containers are too much
# for a 2-core VM; the page draws a pending card like any other), plus `probe`, one running
# replica of shoal-test/web, so the node's column has a card too. Measured, in this order:
#   weight   page weight: the four assets (/, /login, /assets/app.js, /assets/app.css) as curl
#            downloads them (uncompressed; gzip -9 sizes beside them for comparison).
#   metrics  `GET /metrics` with `curl -w '%{time_total} %{size_download}'`, SCRAPES scrapes,
#            with no services and again with the load; median / max.
#   memory   the daemon's VmRSS (and VmHWM, its peak since start) from /proc/PID/status: idle,
#            with the load, then MEM_SECS s while the service `scaler` (shoal-test/web) scales
#            0 <-> SCALE_TO every SCALE_PERIOD s (RSS sampled every 0.5 s): first with no dashboard
#            client, then with the page open in chromium (its SSE stream live).
#   sse      a task change to the SSE event alone: a Python client reads `/api/stream` (logged in
#            with curl), timestamps each `data:` line as it arrives and notes the probe's task IDs
#            in it. CHANGES times: T0 = `date +%s%3N` before `docker service scale -d probe=2`, until
#            the first event naming the new task; also from the task's CreatedAt (the store) to
#            that event. Then back to 1 replica, settled, before the next change.
#   paint    first meaningful paint: headless chromium (chromedriver in the node's namespace, each
#            WebDriver command a curl in it) logs in through the form; a script injected into
#            every document before the page's own (CDP Page.addScriptToEvaluateOnNewDocument,
#            not subject to the page's CSP) watches the DOM with a MutationObserver and records
#            performance.now() (ms since navigation start) when the page first holds >= FMP_CARDS
#            `article.task-card` elements ("DOM"), and in a task queued right then, i.e. after
#            that frame's style, layout and paint ("painted": the number reported). Also
#            chromium's first-contentful-paint and the navigation's responseEnd and
#            DOMContentLoaded end. FMP_RUNS navigations to `/`; median / max.
#   card     a task change to its card on the page: the same CHANGES scale-ups with the page
#            open; a MutationObserver (installed with execute/sync) notes Date.now() when a card
#            with a new task ID of `probe` first appears (DOM) and again in a task queued then
#            (painted: reported). Same clock as the shell (one machine).
# Goals (issue 21): first meaningful paint < 1 s with 1,000 tasks; a change on the page < 500 ms.
#
# Usage: flock -o /tmp/shoal-e2e.lock bench/dashboard.sh        (as root)
#        SERVICES=10 FMP_RUNS=2 CHANGES=3 MEM_SECS=10 bench/dashboard.sh     a quick look
#        bench/dashboard.sh --cleanup   remove what a killed (kill -9) run left behind
# Exit status 1 when a part could not be measured (a FAILED line), not for a missed goal.
# Environment:
#   SERVICES=100  REPLICAS=10  FMP_CARDS (SERVICES x REPLICAS)  FMP_RUNS=5  CHANGES=10
#   SCRAPES=20  MEM_SECS=30  SCALE_TO=3  SCALE_PERIOD=5  TIMEOUT=180 (any single wait)
#   WD_PORT=9515 (chromedriver, in the node's namespace)  PASSWORD (the dashboard's, any 8+ chars)
#   SHOAL=target/release/shoal (built with `cargo build --release -p shoal` when missing; BUILD=0
#   skips the build); SHOAL_LOG=info; KEEP_LOGS=<dir> keeps the daemon's and chromedriver's logs
#   NS_PREFIX=dbn NS_SUBNET=10.94.0 NS_BRIDGE=dbbr0 (the suite uses 10.99.0.x, cluster.sh 10.97.0.x,
#   swarm-peer.sh 10.98.0.x, volumes.sh 10.96.0.x, floating-ip.sh 10.95.0.x)
# Needs: chromium and chromium-driver (Debian's), python3, jq, curl; shoal-test/busybox and
# shoal-test/web in the host engine (scripts/build-test-images.sh). Pulls nothing, sends nothing
# outside the namespace; removes everything it created on exit (daemon, containers, chromedriver
# and chromium, namespaces), Ctrl-C included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
NS_PREFIX=${NS_PREFIX:-dbn}
NS_SUBNET=${NS_SUBNET:-10.94.0}
NS_BRIDGE=${NS_BRIDGE:-dbbr0}
. bench/lib/netns.sh
WAIT_POLL=0.1        # wait_until (bench/lib/shoal.sh) polls every 0.1 s here
. bench/lib/shoal.sh

SERVICES=${SERVICES:-100}
REPLICAS=${REPLICAS:-10}
FMP_CARDS=${FMP_CARDS:-$((SERVICES * REPLICAS))}
FMP_RUNS=${FMP_RUNS:-5}
CHANGES=${CHANGES:-10}
SCRAPES=${SCRAPES:-20}
MEM_SECS=${MEM_SECS:-30}
SCALE_TO=${SCALE_TO:-3}
SCALE_PERIOD=${SCALE_PERIOD:-5}
TIMEOUT=${TIMEOUT:-180}
WD_PORT=${WD_PORT:-9515}
PASSWORD=${PASSWORD:-dashboard bench password}
BUILD=${BUILD:-1}
SHOAL=${SHOAL:-}
ENGINE=unix:///var/run/docker.sock   # the host's engine: containers only, never `docker swarm`
NODES=1
MANAGERS=1
DASH=http://127.0.0.1:9000
METRICS=http://127.0.0.1:9323/metrics
PENDING_IMAGE=shoal-test/busybox
WEB_IMAGE=shoal-test/web
WD_SESSION=
SCALE_PID=
SSE_PID=

maxof() { sort -n | tail -1; }
ms() { awk -v v="$1" 'BEGIN { if (v == "" || v == "n/a") print "n/a"; else printf "%.0f\n", v }'; }
mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "n/a") print "n/a"; else printf "%.1f\n", k / 1024 }'; }
goal() { awk -v v="$1" -v g="$2" 'BEGIN { if (v == "" || v == "n/a") print "n/a"; else print (v + 0 < g + 0 ? "met" : "not met") }'; }
# "median / max" of the numbers on stdin, rounded to whole units.
med_max() {
  local all
  all=$(cat)
  [ -n "$all" ] || { echo "n/a"; return; }
  echo "$(ms "$(median 1 <<< "$all")") / $(ms "$(maxof <<< "$all")")"
}

# ----------------------------------------------------------------------------------------------
# The node: API, dashboard, metrics
# ----------------------------------------------------------------------------------------------
# The Docker API of node 1 on its socket: api PATH [curl args...] (GET).
api() { local p=$1; shift; curl -s --max-time 30 --unix-socket "$(sh_sock 1)" -G "http://shoal$p" "$@"; }
# curl inside node 1 (the dashboard and metrics listen on its loopback).
ncurl() { ns_exec 1 curl -s --max-time 30 "$@"; }
jar() { echo "$(ns_data_dir 1)/cookies"; }
dash_up() { [ "$(ncurl -o /dev/null -w '%{http_code}' "$DASH/login")" = 200 ]; }
session_token() { awk '$6 == "shoal_session" { print $7 }' "$(jar)"; }
vm() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$DAEMON_PID/status"; }   # kB

# Tasks of service $1 (Docker's Task objects, a JSON array).
tasks_of() { api /tasks --data-urlencode "filters={\"service\":[\"$1\"]}"; }
pending_count() {
  api /tasks --data-urlencode 'filters={"desired-state":["running"]}' |
    jq '[.[] | select(.Status.State == "pending")] | length'
}
all_pending() { [ "$(pending_count)" -ge "$((SERVICES * REPLICAS))" ]; }
# Exactly one task of service $1 running (and meant to), none other still on its way out.
one_running() {
  tasks_of "$1" | jq -e '
    ([.[] | select(.DesiredState == "running" and .Status.State == "running")] | length) == 1 and
    ([.[] | select(.DesiredState != "running" and
       ((.Status.State | IN("shutdown", "complete", "failed", "rejected", "orphaned", "remove")) | not))] | length) == 0' >/dev/null
}
# No running container of service $1 (stopped ones stay as task history, as with Swarm).
no_containers() { [ -z "$(engine ps -q --filter "label=com.docker.swarm.service.name=$1")" ]; }

# ----------------------------------------------------------------------------------------------
# WebDriver (chromedriver in node 1; one curl per command, as crates/shoal/tests/common/webdriver.rs)
# ----------------------------------------------------------------------------------------------
wd() {
  local a=(curl -s --max-time 60 -X "$1" "http://127.0.0.1:$WD_PORT$2")
  [ -n "${3:-}" ] && a+=(-H 'content-type: application/json' --data-binary "$3")
  ns_exec 1 "${a[@]}"
}
# A session command; prints its `value` (compact JSON), fails on a WebDriver error.
wds() {
  local out
  out=$(wd "$1" "/session/$WD_SESSION$2" "${3:-}") || { log "WebDriver $1 $2: no answer"; return 1; }
  if jq -e '.value | type == "object" and has("error")' <<< "$out" >/dev/null 2>&1; then
    log "WebDriver $1 $2: $(jq -c .value <<< "$out" | cut -c1-400)"
    return 1
  fi
  jq -c '.value' <<< "$out"
}
# Runs a function body in the page: js SCRIPT [ARGS_JSON]; prints its return value as JSON.
js() { wds POST /execute/sync "$(jq -nc --arg s "$1" --argjson a "${2:-[]}" '{script: $s, args: $a}')"; }
goto() { wds POST /url "$(jq -nc --arg u "$1" '{url: $u}')" >/dev/null; }
element() { wds POST /element "$(jq -nc --arg c "$1" '{using: "css selector", value: $c}')" | jq -r '.[]'; }
wd_ready() { wd GET /status | jq -e '.value.ready == true' >/dev/null 2>&1; }

browser_start() {
  local caps out
  ns_exec_bg 1 chromedriver --port="$WD_PORT" >"$(ns_data_dir 1)/chromedriver.log" 2>&1
  wait_until wd_ready || { log "chromedriver did not get ready"; return 1; }
  caps=$(jq -nc --arg dir "$(ns_data_dir 1)/chromium" '{capabilities: {alwaysMatch: {
    browserName: "chrome", pageLoadStrategy: "normal",
    "goog:chromeOptions": {binary: "/usr/bin/chromium", args: ["--headless=new", "--no-sandbox",
      "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900", "--no-first-run",
      "--disable-extensions", ("--user-data-dir=" + $dir)]}}}}')
  out=$(wd POST /session "$caps")
  WD_SESSION=$(jq -r '.value.sessionId // empty' <<< "$out")
  [ -n "$WD_SESSION" ] || { log "no WebDriver session: $(cut -c1-400 <<< "$out")"; return 1; }
}
browser_stop() {
  [ -n "$WD_SESSION" ] && wd DELETE "/session/$WD_SESSION" >/dev/null 2>&1
  WD_SESSION=
  return 0
}

# Injected before the page's own script in every document: notes when the page first holds
# FMP_CARDS task cards (DOM) and, in a task queued right then, after that frame was drawn.
FMP_JS='(() => {
  const N = %d;
  window.__fmp = null; window.__dom = null;
  const cards = document.getElementsByClassName("task-card");
  const obs = new MutationObserver(() => {
    if (window.__dom !== null || cards.length < N) return;
    window.__dom = performance.now();
    obs.disconnect();
    setTimeout(() => { window.__fmp = performance.now(); }, 0);
  });
  obs.observe(document, { childList: true, subtree: true });
})();'
# [painted, DOM, first-contentful-paint, responseEnd, DOMContentLoaded end, cards] once painted.
FMP_READ='if (window.__fmp === null || window.__fmp === undefined) return null;
  const n = performance.getEntriesByType("navigation")[0] || {};
  const p = performance.getEntriesByName("first-contentful-paint")[0];
  return [window.__fmp, window.__dom, p ? p.startTime : -1, n.responseEnd || -1,
          n.domContentLoadedEventEnd || -1, document.getElementsByClassName("task-card").length];'
fmp_ready() { FMP_OUT=$(js "$FMP_READ") && [ -n "$FMP_OUT" ] && [ "$FMP_OUT" != null ]; }
# The probe's cards: the first time each task ID's card is in the DOM, and after that frame.
CARD_JS='const S = window.__S = { dom: {}, paint: {} };
  const note = () => {
    const now = Date.now(), fresh = [];
    for (const c of document.querySelectorAll("article.task-card[data-service-name=probe]")) {
      const id = c.dataset.taskId;
      if (!(id in S.dom)) { S.dom[id] = now; fresh.push(id); }
    }
    if (fresh.length) setTimeout(() => { const t = Date.now(); for (const id of fresh) S.paint[id] = t; }, 0);
  };
  note();
  new MutationObserver(note).observe(document.body, { childList: true, subtree: true });
  return Object.keys(S.dom).length;'
cards_on_page() { js 'return document.getElementsByClassName("task-card").length;'; }
enough_cards() { [ "$(cards_on_page 2>/dev/null || echo 0)" -ge "$FMP_CARDS" ]; }
at_index() { [ "$(js 'return location.pathname;' 2>/dev/null)" = '"/"' ]; }

login_in_browser() {
  local pw
  goto "$DASH/login" || return 1
  pw=$(element '#password') && [ -n "$pw" ] || return 1
  wds POST "/element/$pw/value" "$(jq -nc --arg t "$PASSWORD" '{text: $t}')" >/dev/null || return 1
  wds POST "/element/$(element '#login')/click" '{}' >/dev/null || return 1
  wait_until at_index || { log "the browser did not get past the login"; return 1; }
}

# ----------------------------------------------------------------------------------------------
# A task change, seen by the SSE client or by the page
# ----------------------------------------------------------------------------------------------
# The SSE client (in node 1): one line per `data:` line, "arrival_ms bytes id id ..." (the probe's
# tasks: in the first event's `tasks`, then in each delta's `tasks_upsert`).
SSE_PY='
import http.client, json, sys, time
token, svc, out = sys.argv[1], sys.argv[2], open(sys.argv[3], "a", buffering=1)
c = http.client.HTTPConnection("127.0.0.1", 9000)
c.request("GET", "/api/stream", headers={"Cookie": "shoal_session=" + token, "Accept": "text/event-stream"})
r = c.getresponse()
if r.status != 200:
    sys.exit("stream: HTTP %d" % r.status)
while True:
    line = r.readline()
    if not line:
        break
    if not line.startswith(b"data:"):
        continue
    t = time.time_ns() // 1_000_000
    try:
        v = json.loads(line[5:])
    except ValueError:
        continue
    tasks = (v.get("tasks") or []) + (v.get("tasks_upsert") or [])
    ids = [x["id"] for x in tasks if x.get("service") == svc]
    out.write("%d %d %s\n" % (t, len(line) - 5, " ".join(ids)))
'
SSE_LOG=
sse_start() {
  SSE_LOG="$(ns_data_dir 1)/sse.log"
  : > "$SSE_LOG"
  ns_exec_bg 1 "$PYTHON" -c "$SSE_PY" "$(session_token)" "$PROBE_ID" "$SSE_LOG" \
    >"$(ns_data_dir 1)/sse-client.log" 2>&1
  SSE_PID=$NS_LAST_PID
  wait_until eval '[ -s "$SSE_LOG" ]' || { log "no SSE event within $TIMEOUT s"; cat "$(ns_data_dir 1)/sse-client.log" >&2; return 1; }
}
sse_stop() { [ -n "$SSE_PID" ] && kill "$SSE_PID" 2>/dev/null; SSE_PID=; return 0; }

# seen_<how> ID: sets SEEN (ms) and SEEN_DOM once the new task is on that side.
seen_sse() { SEEN=$(awk -v id="$1" 'index($0, id) { print $1; exit }' "$SSE_LOG"); SEEN_DOM=$SEEN; [ -n "$SEEN" ]; }
seen_page() {
  local v
  v=$(js 'const S = window.__S; return S && S.paint[arguments[0]] ? [S.paint[arguments[0]], S.dom[arguments[0]]] : null;' \
    "$(jq -nc --arg id "$1" '[$id]')") || return 1
  [ "$v" != null ] || return 1
  SEEN=$(jq -r '.[0]' <<< "$v")
  SEEN_DOM=$(jq -r '.[1]' <<< "$v")
}
new_probe_task() { NEW_ID=$(tasks_of probe | jq -r '.[].ID' | grep -vxF -f "$KNOWN" | head -1); [ -n "$NEW_ID" ]; }

# changes HOW: CHANGES scale-ups of probe (1 -> 2, then back to 1 and settled); sets CH_T0 (from
# the CLI command), CH_STORE (from the task's CreatedAt), CH_DOM (DOM, the page only), all ms.
changes() {
  local how=$1 r t0 created c_ms
  CH_T0= CH_STORE= CH_DOM=
  KNOWN="$(ns_data_dir 1)/known-ids"
  for ((r = 1; r <= CHANGES; r++)); do
    wait_until one_running probe || { log "probe did not settle on 1 running task"; return 1; }
    sleep 0.5
    tasks_of probe | jq -r '.[].ID' > "$KNOWN"
    t0=$(date +%s%3N)
    sh 1 service scale -d probe=2 >/dev/null 2>&1 || { log "service scale probe=2 failed"; return 1; }
    wait_until new_probe_task || { log "no new task of probe"; return 1; }
    wait_until "seen_$how" "$NEW_ID" || { log "$how: task $NEW_ID never showed"; return 1; }
    created=$(tasks_of probe | jq -r --arg id "$NEW_ID" '.[] | select(.ID == $id) | .CreatedAt')
    c_ms=$(date -d "$created" +%s%3N)
    CH_T0="$CH_T0 $((SEEN - t0))"
    CH_STORE="$CH_STORE $((SEEN - c_ms))"
    CH_DOM="$CH_DOM $((SEEN_DOM - t0))"
    log "  $how change $r: new task ${NEW_ID:0:12} seen after $((SEEN - t0)) ms (from its creation: $((SEEN - c_ms)) ms)"
    sh 1 service scale -d probe=1 >/dev/null 2>&1 || { log "service scale probe=1 failed"; return 1; }
  done
  wait_until one_running probe
}

# ----------------------------------------------------------------------------------------------
# Memory while a service scales up and down
# ----------------------------------------------------------------------------------------------
scale_loop() {
  local n=$SCALE_TO
  while :; do
    sh 1 service scale -d "scaler=$n" >/dev/null 2>&1
    n=$((SCALE_TO - n))
    sleep "$SCALE_PERIOD"
  done
}
scale_stop() {
  [ -n "$SCALE_PID" ] || return 0
  kill "$SCALE_PID" 2>/dev/null
  wait "$SCALE_PID" 2>/dev/null
  SCALE_PID=
}
# mem_window: MEM_SECS s of scaling; sets MW_RSS ("median / max" MiB), MW_HWM (MiB) and MW_VIEWS
# (SSE events the page got meanwhile, when it is open).
mem_window() {
  local end samples=() k
  scale_loop &
  SCALE_PID=$!
  end=$(($(date +%s) + MEM_SECS))
  while [ "$(date +%s)" -lt "$end" ]; do
    k=$(vm VmRSS) && samples+=("$(mib "$k")")
    sleep 0.5
  done
  scale_stop
  MW_HWM=$(mib "$(vm VmHWM)")
  MW_RSS="$(printf '%s\n' "${samples[@]}" | median 1) / $(printf '%s\n' "${samples[@]}" | maxof)"
  sh 1 service scale -d scaler=0 >/dev/null 2>&1
  wait_until no_containers scaler || log "scaler's containers are still there"
}

# ----------------------------------------------------------------------------------------------
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
keep_logs() {
  [ -n "${KEEP_LOGS:-}" ] || return 0
  sh_keep_logs
  cp "$(ns_data_dir 1)/chromedriver.log" "$KEEP_LOGS/" 2>/dev/null
  return 0
}
cleanup_hooks() {
  # Hooks run last-registered first: the logs, then shoal (ns_cleanup then kills chromedriver,
  # chromium and whatever else runs in the namespace).
  ns_on_cleanup sh_cleanup_all
  ns_on_cleanup keep_logs
}
if [ "${1:-}" = "--cleanup" ]; then
  SHOAL=${SHOAL:-shoal}
  cleanup_hooks
  ns_cleanup
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if ls /run/netns 2>/dev/null | grep -qE "^${NS_PREFIX}([0-9]+|hub)\$"; then
  echo "namespaces ${NS_PREFIX}* exist already (another run?); bench/dashboard.sh --cleanup removes them" >&2
  exit 1
fi
for c in chromium chromedriver python3 jq curl nsenter gzip; do
  command -v "$c" >/dev/null || { echo "$c is missing (chromium, chromium-driver, python3, jq, curl)" >&2; exit 1; }
done
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || exit 1
BUILD_NOTE="release build"
if [ -z "$SHOAL" ]; then
  SHOAL=${CARGO_TARGET_DIR:-$ROOT/target}/release/shoal
  if [ ! -x "$SHOAL" ] && [ "$BUILD" = 1 ]; then
    log "building shoal: cargo build --release -p shoal"
    cargo build --release -p shoal >&2 || log "release build failed"
  fi
fi
case $SHOAL in */debug/*) BUILD_NOTE="DEBUG build" ;; esac
[ -x "$SHOAL" ] || { echo "no shoal binary at $SHOAL (set SHOAL=...)" >&2; exit 1; }
for img in "$PENDING_IMAGE" "$WEB_IMAGE"; do
  engine image inspect "$img" >/dev/null 2>&1 || { echo "$img is not in the host engine (scripts/build-test-images.sh)" >&2; exit 1; }
done

cleanup() {
  trap - EXIT INT TERM
  scale_stop
  sse_stop
  browser_stop
  log "cleaning up"
  ns_cleanup
}
cleanup_hooks
trap cleanup EXIT
trap 'exit 130' INT TERM

T_START=$(now)
FAILED=()
fail() { log "FAILED: $*"; FAILED+=("$*"); }

ns_create 1 || exit 1
sh_start 1 || exit 1
DAEMON_PID=$(sh_pid 1)
sh 1 swarm init --advertise-addr "$(ns_ip 1)" >/dev/null || exit 1
remember_ids
echo "$PASSWORD" | "$SHOAL" dashboard password -H "$(sh_host 1)" >/dev/null || { log "setting the dashboard password failed"; exit 1; }
wait_until dash_up || { log "the dashboard does not answer on $DASH in $(ns_name 1)"; exit 1; }
[ "$(ncurl -o /dev/null -w '%{http_code}' -c "$(jar)" --data-urlencode "password=$PASSWORD" "$DASH/login")" = 303 ] &&
  [ -n "$(session_token)" ] || { log "login with curl failed"; exit 1; }
log "manager up, dashboard password set, logged in with curl"

# ---- page weight ------------------------------------------------------------------------------
WEIGHT_ROWS=() W_TOTAL=0 W_GZ=0
for p in / /login /assets/app.js /assets/app.css; do
  f="$(ns_data_dir 1)/asset"
  # `/` needs the session; /login with one redirects to `/`.
  cookie=()
  [ "$p" = / ] && cookie=(-b "$(jar)")
  code=$(ncurl "${cookie[@]}" -o "$f" -w '%{http_code}' "$DASH$p")
  b=$(stat -c %s "$f")
  gz=$(gzip -9 -c "$f" | wc -c)
  [ "$code" = 200 ] || fail "page weight: $p answered HTTP $code"
  WEIGHT_ROWS+=("| $p | $b | $gz |")
  W_TOTAL=$((W_TOTAL + b)) W_GZ=$((W_GZ + gz))
done
log "page weight: $W_TOTAL bytes uncompressed, $W_GZ gzip -9"

# ---- /metrics ----------------------------------------------------------------------------------
# scrape_stats: SCRAPES scrapes; sets SC_TIME ("median / max" ms), SC_SIZE (bytes, last), SC_SERIES.
scrape_stats() {
  local out
  out=$(for ((r = 1; r <= SCRAPES; r++)); do ncurl -o /dev/null -w '%{http_code} %{time_total} %{size_download}\n' "$METRICS"; done)
  if grep -qv '^200 ' <<< "$out"; then fail "/metrics: $(grep -v '^200 ' <<< "$out" | head -1)"; fi
  SC_TIME=$(awk '{ print $2 * 1000 }' <<< "$out" | median 1 | xargs printf '%.1f')
  SC_TIME="$SC_TIME / $(awk '{ print $2 * 1000 }' <<< "$out" | maxof | xargs printf '%.1f')"
  SC_SIZE=$(awk 'END { print $3 }' <<< "$out")
  SC_SERIES=$(ncurl "$METRICS" | grep -cv '^#')
}
scrape_stats
M0_TIME=$SC_TIME M0_SIZE=$SC_SIZE M0_SERIES=$SC_SERIES
log "/metrics, no services: $M0_TIME ms (median / max), $M0_SIZE bytes, $M0_SERIES samples"
MEM_IDLE=$(mib "$(vm VmRSS)")

# ---- the load ---------------------------------------------------------------------------------
sh 1 service create -d --name probe --no-resolve-image --replicas 1 "$WEB_IMAGE" >/dev/null || exit 1
sh 1 service create -d --name scaler --no-resolve-image --replicas 0 "$WEB_IMAGE" >/dev/null || exit 1
PROBE_ID=$(sh 1 service inspect probe --format '{{.ID}}')
wait_until one_running probe || { log "probe does not run"; exit 1; }
t0=$(now)
for ((s = 1; s <= SERVICES; s++)); do
  sh 1 service create -d --name "$(printf 'pend%03d' "$s")" --no-resolve-image --replicas "$REPLICAS" \
    --constraint node.labels.nowhere==1 "$PENDING_IMAGE" sleep 3600 >/dev/null || { log "service create $s failed"; exit 1; }
done
CREATE_SECS=$(since "$t0")
wait_until all_pending || { log "only $(pending_count) pending tasks"; exit 1; }
log "$SERVICES services x $REPLICAS pending replicas created in $CREATE_SECS s, all pending after $(since "$t0") s"
sleep 2
scrape_stats
M1_TIME=$SC_TIME M1_SIZE=$SC_SIZE M1_SERIES=$SC_SERIES
log "/metrics, with the load: $M1_TIME ms (median / max), $M1_SIZE bytes, $M1_SERIES samples"
MEM_LOAD=$(mib "$(vm VmRSS)")

# ---- memory, no dashboard client --------------------------------------------------------------
log "memory: $MEM_SECS s of scaler 0 <-> $SCALE_TO, no dashboard client"
mem_window
MEM_NOCLIENT_RSS=$MW_RSS MEM_NOCLIENT_HWM=$MW_HWM
log "  VmRSS $MW_RSS MiB (median / max), VmHWM $MW_HWM MiB"

# ---- a change to the SSE event -----------------------------------------------------------------
SSE_T0= SSE_STORE=
log "SSE alone: $CHANGES scale-ups of probe, a Python client on /api/stream"
if sse_start && changes sse; then
  SSE_T0=$CH_T0 SSE_STORE=$CH_STORE
else
  fail "the SSE part"
fi
SSE_EVENTS=$(wc -l < "$SSE_LOG" 2>/dev/null || echo 0)
# The deltas' sizes: every event after the stream's first (a whole view).
DELTA_BYTES=$(tail -n +2 "$SSE_LOG" 2>/dev/null | awk '{ print $2 }' | median 0)
SSE_BYTES=$(ncurl -b "$(jar)" -N --max-time 5 "$DASH/api/stream" | awk '/^data:/ { print length($0) - 5; exit }')
sse_stop

# ---- the browser: first meaningful paint, a change to its card, memory with the page open -------
FMP=() DOMT=() FCP=() RESP=() DCL=() FMP_NOTE=
PAGE_T0= PAGE_STORE= PAGE_DOM=
MEM_PAGE_RSS= MEM_PAGE_HWM=
CHROMIUM=$(chromium --version 2>/dev/null | awk '{ print $2 }')
browser_part() {
  local r out
  log "browser: chromedriver and headless chromium $CHROMIUM in $(ns_name 1)"
  browser_start || return 1
  wds POST /goog/cdp/execute "$(jq -nc --arg s "$(printf "$FMP_JS" "$FMP_CARDS")" \
    '{cmd: "Page.addScriptToEvaluateOnNewDocument", params: {source: $s}}')" >/dev/null ||
    { log "could not inject the paint probe (CDP)"; return 1; }
  login_in_browser || return 1
  wait_until enough_cards || { log "the page never showed $FMP_CARDS cards"; return 1; }
  log "logged in through the form; $(cards_on_page) cards on the page"
  for ((r = 1; r <= FMP_RUNS; r++)); do
    goto "$DASH/" || return 1
    FMP_OUT=
    wait_until fmp_ready || { log "run $r: the page never held $FMP_CARDS cards"; return 1; }
    read -r a b c d e n < <(jq -r '@tsv' <<< "$FMP_OUT")
    FMP+=("$a") DOMT+=("$b") FCP+=("$c") RESP+=("$d") DCL+=("$e")
    log "  run $r: $(ms "$a") ms painted with $n cards (DOM $(ms "$b") ms), first-contentful-paint $(ms "$c") ms, responseEnd $(ms "$d") ms, DOMContentLoaded $(ms "$e") ms"
  done

  log "page: $CHANGES scale-ups of probe, the page open"
  [ "$(js "$CARD_JS")" -ge 1 ] || { log "no probe card on the page"; return 1; }
  changes page || return 1
  PAGE_T0=$CH_T0 PAGE_STORE=$CH_STORE PAGE_DOM=$CH_DOM

  log "memory: $MEM_SECS s of scaler 0 <-> $SCALE_TO, the page open (SSE live)"
  mem_window
  MEM_PAGE_RSS=$MW_RSS MEM_PAGE_HWM=$MW_HWM
  log "  VmRSS $MW_RSS MiB (median / max), VmHWM $MW_HWM MiB"
}
browser_part || fail "the browser part"
browser_stop
TOTAL_SECS=$(since "$T_START")

# ---- report ---------------------------------------------------------------------------------
list() { printf '%s\n' "$@" | grep -v '^$'; }
# The numbers given, each rounded to a whole ms, space-separated.
whole() { [ $# -gt 0 ] && [ -n "$*" ] || { echo "n/a"; return; }; printf '%s\n' "$@" | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 } END { print "" }'; }
FMP_MM=$(list "${FMP[@]}" | med_max)
PAGE_MM=$(echo $PAGE_T0 | tr ' ' '\n' | med_max)
echo
echo "Dashboard and /metrics: $(date '+%F %H:%M'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), Docker $(engine version --format '{{.Server.Version}}' 2>/dev/null), chromium ${CHROMIUM:-?} headless, shoal $BUILD_NOTE"
echo "1 node (manager); load: $SERVICES services x $REPLICAS replicas of $PENDING_IMAGE, all pending (constraint node.labels.nowhere==1), plus probe (1 running replica of $WEB_IMAGE)"
echo
echo "| the page, $FMP_CARDS pending tasks + probe | median / max | goal |"
echo "| --- | --- | --- |"
echo "| first meaningful paint: navigation start to >= $FMP_CARDS task cards drawn ($FMP_RUNS loads) | $FMP_MM ms | < 1000 ms: $(goal "$(list "${FMP[@]}" | median 1)" 1000) |"
echo "| the same, cards in the DOM (before their layout and paint) | $(list "${DOMT[@]}" | med_max) ms | |"
echo "| first-contentful-paint (chromium) | $(list "${FCP[@]}" | med_max) ms | |"
echo "| navigation responseEnd | $(list "${RESP[@]}" | med_max) ms | |"
echo "| navigation DOMContentLoaded end | $(list "${DCL[@]}" | med_max) ms | |"
echo "| task change (\`service scale -d probe=2\`) to its card drawn ($CHANGES changes) | $PAGE_MM ms | < 500 ms: $(goal "$(echo $PAGE_T0 | tr ' ' '\n' | median 1)" 500) |"
echo "| the same, from the task's creation in the store | $(echo $PAGE_STORE | tr ' ' '\n' | med_max) ms | |"
echo "| task change to the SSE event, no browser (Python client) | $(echo $SSE_T0 | tr ' ' '\n' | med_max) ms | |"
echo "| the same, from the task's creation in the store | $(echo $SSE_STORE | tr ' ' '\n' | med_max) ms | |"
echo
echo "| /metrics, $SCRAPES scrapes | no services | $SERVICES services, $((SERVICES * REPLICAS)) tasks |"
echo "| --- | --- | --- |"
echo "| scrape time, median / max | $M0_TIME ms | $M1_TIME ms |"
echo "| size | $M0_SIZE bytes ($M0_SERIES samples) | $M1_SIZE bytes ($M1_SERIES samples) |"
echo
echo "| daemon memory (MiB) | VmRSS | VmHWM after |"
echo "| --- | --- | --- |"
echo "| idle, swarm initialized, no services | $MEM_IDLE | |"
echo "| with the load, no dashboard client | $MEM_LOAD | |"
echo "| $MEM_SECS s scaling scaler 0 <-> $SCALE_TO, no dashboard client (median / max) | $MEM_NOCLIENT_RSS | $MEM_NOCLIENT_HWM |"
echo "| $MEM_SECS s scaling, the page open in chromium, SSE live (median / max) | ${MEM_PAGE_RSS:-n/a} | ${MEM_PAGE_HWM:-n/a} |"
echo
echo "| page weight | bytes | gzip -9 |"
echo "| --- | --- | --- |"
printf '%s\n' "${WEIGHT_ROWS[@]}"
echo "| total | $W_TOTAL | $W_GZ |"
echo
echo "- First meaningful paint, ms per load: $(whole "${FMP[@]}") (DOM: $(whole "${DOMT[@]}"); FCP: $(whole "${FCP[@]}"); responseEnd: $(whole "${RESP[@]}"); DOMContentLoaded: $(whole "${DCL[@]}"))."
echo "- Task change to its card drawn, ms:${PAGE_T0:- n/a} (DOM:${PAGE_DOM:- n/a}; from the task's CreatedAt:${PAGE_STORE:- n/a}). T0 is before the docker CLI starts (the CLI's own inspect + update included)."
echo "- Task change to the SSE event, ms:${SSE_T0:- n/a} (from CreatedAt:${SSE_STORE:- n/a}); one view event is ${SSE_BYTES:-?} bytes of JSON with the load, a later change's delta ${DELTA_BYTES:-?} bytes (median); the client got $SSE_EVENTS events."
echo "- /metrics: no services $M0_TIME ms, $M0_SIZE bytes; with the load $M1_TIME ms, $M1_SIZE bytes (median / max of $SCRAPES)."
echo "- Memory: idle $MEM_IDLE MiB, with the load $MEM_LOAD MiB; scaling without a client $MEM_NOCLIENT_RSS MiB, with the page open ${MEM_PAGE_RSS:-n/a} MiB (VmRSS median / max); VmHWM ${MEM_NOCLIENT_HWM} then ${MEM_PAGE_HWM:-n/a} MiB."
echo "- Page weight: $W_TOTAL bytes uncompressed ($W_GZ with gzip -9) for /, /login, /assets/app.js, /assets/app.css."
echo "- $SERVICES services created in $CREATE_SECS s; whole run $TOTAL_SECS s."
for f in "${FAILED[@]}"; do echo "FAILED: $f"; done
[ ${#FAILED[@]} = 0 ]
