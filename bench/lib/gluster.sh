# shellcheck shell=bash
# GlusterFS servers in the namespaced nodes of bench/lib/netns.sh (source that first):
#   . bench/lib/netns.sh; . bench/lib/gluster.sh
# The shell port of the test harness's lab (crates/shoal/tests/common/gluster.rs): node i's
# glusterd runs in the node's network namespace *and* a private mount namespace of its own
# (`nsenter --net --uts` + `unshare -m`), where <node data>/gluster/{lib,log} are bound over
# /var/lib/glusterd and /var/log/glusterfs and a tmpfs covers /run, so every glusterd has its own
# state, UUID, logs and /run/glusterd.socket. The gluster CLI only talks to the glusterd of the
# mount namespace it runs in, so it runs through `nsenter -t <glusterd pid> -m -n`. Peers know
# each other by address (ns_ip i). Bricks are <node data>/gluster/bricks/<volume>, on the root
# file system (hence `force`), the same path inside and outside the glusterd's mount namespace:
# the host reads a brick's files directly. gl_mount's FUSE clients run in a node's network
# namespace but the host's mount namespace, so the host and the Docker Engine see the mount.
#
#   gl_start i...           start glusterd on nodes i... and wait until each answers
#   gl_pool i...            node $1 probes the others; waits until all see each other connected
#   gl i args...            `gluster --mode=script args` against node i's glusterd
#   gl_volume NAME i...     replica-<count> volume NAME, one brick per node i..., started; waits
#                           until every brick is online
#   gl_brick_dir NAME i     node i's brick directory of NAME (a host path)
#   gl_source NAME i...     "ip1:/NAME backup-volfile-servers=ip2:ip3" for brick nodes i...
#   gl_mount NAME DIR via i...   FUSE mount of NAME (brick nodes i...) on DIR, client in node via
#   gl_umount DIR           unmount a gl_mount (lazily if busy)
#   gl_kill i               kill -9 every gluster process of node i (glusterd, bricks, shd)
#   gl_cleanup              unmount every gl_mount, stop every volume, kill every glusterd and its
#                           children; register it with ns_on_cleanup gl_cleanup (before the
#                           hooks that must run first: hooks run last-registered first)
GL_TIMEOUT=${GL_TIMEOUT:-60}

_gl_log() { printf '[%(%H:%M:%S)T] gluster: %s\n' -1 "$*" >&2; }
_gl_dir() { echo "$(ns_data_dir "$1")/gluster"; }
gl_brick_dir() { echo "$(_gl_dir "$2")/bricks/$1"; }
_gl_pid() { cat "$(_gl_dir "$1")/glusterd.pid" 2>/dev/null; }

# Run by `unshare -m` in a node's network namespace: private state, logs and /run, then glusterd
# in the foreground (same pid: nsenter, unshare and sh exec each other).
_GL_SCRIPT='set -e
d="$1"
mkdir -p "$d/lib" "$d/log" /var/lib/glusterd /var/log/glusterfs
mount --bind "$d/lib" /var/lib/glusterd
mount --bind "$d/log" /var/log/glusterfs
mount -t tmpfs -o mode=0755 shoal-gluster /run
exec glusterd -N -l "$d/log/glusterd.log"'

gl() {
  local i=$1 pid; shift
  pid=$(_gl_pid "$i")
  [ -n "$pid" ] || { _gl_log "glusterd of node $i is not running"; return 1; }
  nsenter -t "$pid" -m -n gluster --mode=script "$@" </dev/null
}

gl_start() {
  local i d deadline pid
  for i in "$@"; do
    d=$(_gl_dir "$i")
    mkdir -p "$d/bricks"
    ns_exec_bg "$i" unshare -m --propagation private sh -c "$_GL_SCRIPT" shoal-glusterd "$d" \
      >>"$d/glusterd.out" 2>&1 </dev/null
    echo "$NS_LAST_PID" > "$d/glusterd.pid"
  done
  for i in "$@"; do
    d=$(_gl_dir "$i")
    pid=$(_gl_pid "$i")
    deadline=$(($(date +%s) + GL_TIMEOUT))
    # The script execs glusterd once its mounts are made; a CLI call before then would talk to
    # the host's directories.
    until [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = glusterd ] && gl "$i" pool list >/dev/null 2>&1; do
      if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
        _gl_log "glusterd of node $i did not come up:"
        tail -n 20 "$d/glusterd.out" "$d/log/glusterd.log" >&2 2>/dev/null
        return 1
      fi
      sleep 0.2
    done
  done
}

gl_pool() {
  local first=$1 i deadline want=$(($# - 1))
  for i in "${@:2}"; do gl "$first" peer probe "$(ns_ip "$i")" >/dev/null || return 1; done
  for i in "$@"; do
    deadline=$(($(date +%s) + GL_TIMEOUT))
    until [ "$(gl "$i" peer status 2>/dev/null | grep -c 'State: Peer in Cluster (Connected)')" = "$want" ]; do
      [ "$(date +%s)" -ge "$deadline" ] && { _gl_log "node $i does not see $want peers"; gl "$i" peer status >&2; return 1; }
      sleep 0.3
    done
  done
}

# Bricks of NAME online, as node $2's glusterd sees them ("1" per online brick).
_gl_online() { gl "$2" volume status "$1" --xml 2>/dev/null | grep -c '<status>1</status>'; }

gl_volume() {
  local name=$1 first=$2 i bricks=() deadline
  shift
  for i in "$@"; do bricks+=("$(ns_ip "$i"):$(gl_brick_dir "$name" "$i")"); done
  gl "$first" volume create "$name" replica "$#" "${bricks[@]}" force >/dev/null || return 1
  echo "$name $first" >> "$NS_DATA/gluster-volumes"
  gl "$first" volume start "$name" >/dev/null || return 1
  deadline=$(($(date +%s) + GL_TIMEOUT))
  # `volume status` lists the self-heal daemons too: at least one online entry per brick.
  until [ "$(_gl_online "$name" "$first")" -ge "$#" ]; do
    [ "$(date +%s)" -ge "$deadline" ] && { _gl_log "bricks of $name not online"; gl "$first" volume status "$name" >&2; return 1; }
    sleep 0.3
  done
}

gl_source() {
  local name=$1 i backups=()
  for i in "${@:3}"; do backups+=("$(ns_ip "$i")"); done
  local IFS=:
  echo "$(ns_ip "$2"):/$name backup-volfile-servers=${backups[*]}"
}

gl_mount() {
  local name=$1 dir=$2 via=$3 src opts log
  shift 3
  read -r src opts < <(gl_source "$name" "$@")
  mkdir -p "$dir"
  log="$NS_DATA/gluster-mount-$(echo "$dir" | tr '/' '_').log"
  echo "$dir" >> "$NS_DATA/gluster-mounts"
  ns_exec "$via" mount -t glusterfs -o "$opts,log-file=$log" "$src" "$dir" </dev/null || {
    _gl_log "mount -t glusterfs $src $dir failed; client log:"
    tail -n 20 "$log" >&2
    return 1
  }
  awk -v m="$dir" '$5 == m && / - fuse.glusterfs / { found = 1 } END { exit !found }' /proc/self/mountinfo
}

gl_umount() { umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null; }

# kill -9 of every process in node i's glusterd mount namespace (glusterd, bricks, shd).
gl_kill() {
  local i=$1 pid ns p
  pid=$(_gl_pid "$i")
  [ -n "$pid" ] || return 0
  ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)
  if [ -n "$ns" ] && [ "$ns" != "$(readlink /proc/self/ns/mnt)" ]; then
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && case $(cat "$p/comm" 2>/dev/null) in
        gluster*) kill -KILL "${p#/proc/}" 2>/dev/null ;;
      esac
    done
  fi
  kill -KILL "$pid" 2>/dev/null
  rm -f "$(_gl_dir "$i")/glusterd.pid"
}

gl_cleanup() {
  local m name first f
  if [ -f "$NS_DATA/gluster-mounts" ]; then
    while read -r m; do gl_umount "$m"; done < "$NS_DATA/gluster-mounts"
    rm -f "$NS_DATA/gluster-mounts"
  fi
  if [ -f "$NS_DATA/gluster-volumes" ]; then
    while read -r name first; do
      gl "$first" volume stop "$name" force >/dev/null 2>&1
      gl "$first" volume delete "$name" >/dev/null 2>&1
    done < "$NS_DATA/gluster-volumes"
    rm -f "$NS_DATA/gluster-volumes"
  fi
  for f in "$NS_DATA"/*/gluster/glusterd.pid; do
    [ -f "$f" ] || continue
    f=${f%/gluster/glusterd.pid}
    gl_kill "${f##*/"$NS_PREFIX"}"
  done
  return 0
}
