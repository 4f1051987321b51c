#!/usr/bin/env bash
# One command to a single-node shoal cluster running the sample stack (examples/stack.yml):
# builds the test images and shoal, starts `shoal daemon` on the default paths, `docker swarm
# init`, `docker stack deploy`, waits until every replica runs and calls the published port.
# Run as root from anywhere in the repository. Safe to run again: it reuses what is running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA=${SHOAL_DATA:-/var/lib/shoal}
SOCK=${SHOAL_SOCKET:-/run/shoal/docker.sock}
LOG=${SHOAL_DAEMON_LOG:-/run/shoal/daemon.log}

step() { printf '\n==> %s\n' "$*"; }

step "building the test images (shoal-test/busybox, shoal-test/web) on the local engine"
scripts/build-test-images.sh

# From here on the docker CLI talks to shoal.
export DOCKER_HOST=unix://$SOCK

step "building shoal (release)"
cargo build --release -p shoal

if docker version >/dev/null 2>&1; then
  step "shoal daemon already answers on $SOCK"
else
  step "starting shoal daemon (data: $DATA, socket: $SOCK, log: $LOG)"
  mkdir -p "$(dirname "$SOCK")" "$(dirname "$LOG")"
  nohup target/release/shoal daemon --data-dir "$DATA" --socket "$SOCK" >>"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 50); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  docker version >/dev/null 2>&1 || { echo "shoal daemon did not start; see $LOG" >&2; exit 1; }
fi

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
  step "docker swarm init"
  docker swarm init --advertise-addr 127.0.0.1
fi

# The dashboard's admin password: SHOAL_DASHBOARD_PASSWORD, or a new random one shown at the end.
PASSWORD=${SHOAL_DASHBOARD_PASSWORD:-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')}
step "shoal dashboard password (the web dashboard on http://127.0.0.1:9000/)"
printf '%s\n' "$PASSWORD" | target/release/shoal dashboard password -H "$SOCK"

step "docker stack deploy -c examples/stack.yml demo"
docker stack deploy -c examples/stack.yml demo

step "waiting for every replica to run"
for _ in $(seq 1 150); do
  web=$(docker service ls --filter name=demo_web --format '{{.Replicas}}')
  api=$(docker service ls --filter name=demo_api --format '{{.Replicas}}')
  printf '\r  demo_web %s   demo_api %s ' "$web" "$api"
  [ "$web" = "3/3" ] && [ "$api" = "2/2" ] && break
  sleep 0.2
done
echo
docker service ls

step "curl http://127.0.0.1:8080/ (three calls, balanced over the web replicas)"
for _ in 1 2 3; do
  for _ in $(seq 1 25); do curl -fsS --max-time 3 http://127.0.0.1:8080/ && break; sleep 0.2; done
done

step "the dashboard and /metrics answer"
login=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' --data-urlencode "password=$PASSWORD" http://127.0.0.1:9000/login)
echo "  POST /login: $login"
[ "$login" = "303 http://127.0.0.1:9000/" ] || { echo "the dashboard login failed; see $LOG" >&2; exit 1; }
curl -fsS http://127.0.0.1:9323/metrics | grep '^shoal_service_replicas_running'

cat <<TXT

Done. The web dashboard (the cluster live, a column per node, actions):
  http://127.0.0.1:9000/   user admin, password: $PASSWORD
  (a new one: echo NEW-PASSWORD | target/release/shoal dashboard password -H $SOCK)
Prometheus metrics: http://127.0.0.1:9323/metrics
Point the docker CLI at shoal and look around:
  export DOCKER_HOST=$DOCKER_HOST
  docker service ls; docker service ps demo_web; docker stack ps demo
  docker service scale demo_web=5
  docker service logs demo_api
Daemon log: $LOG
Tear down:  docker stack rm demo; docker swarm leave --force; pkill -f 'shoal daemon'
TXT
