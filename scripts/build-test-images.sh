#!/usr/bin/env bash
# Builds the local test images (no registry is reachable): a busybox image from Debian's
# busybox-static, and on top of it an HTTP responder that answers with its hostname.
#   shoal-test/busybox:latest   sh, wget, nslookup, nc, ... with glibc NSS so names resolve
#   shoal-test/web:latest       `web-serve`: httpd on $PORT (default 80) serving its hostname,
#                               and on /cgi-bin/whoami "<hostname> <client address>"
# Idempotent: an image that already exists at the current version is rebuilt only with --force.
set -euo pipefail

force=0
[ "${1:-}" = "--force" ] && force=1

# Bump when an image's content changes, so machines holding an older build rebuild it.
WEB_VERSION=2
have() { docker image inspect "$1" >/dev/null 2>&1; }
version_of() { docker image inspect -f '{{index .Config.Labels "shoal.test.version"}}' "$1" 2>/dev/null || true; }

bb=$(command -v busybox || true)
if [ -z "$bb" ] || ! "$bb" --list >/dev/null 2>&1; then
  echo "busybox-static is missing: apt-get install busybox-static" >&2
  exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

build_busybox_root() {
  local r=$1
  mkdir -p "$r"/{bin,etc,tmp,www,proc,sys,dev,run,var/run,lib/x86_64-linux-gnu,lib64,root}
  chmod 1777 "$r/tmp"
  cp "$bb" "$r/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$r/bin/$applet"
  done
  # Static glibc still dlopens NSS modules for name lookups.
  for lib in libc.so.6 libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$r/lib/x86_64-linux-gnu/$lib"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/ld-linux-x86-64.so.2"
  printf 'hosts: files dns\nnetworks: files\npasswd: files\ngroup: files\n' > "$r/etc/nsswitch.conf"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
}

if [ $force = 1 ] || ! have shoal-test/busybox:latest; then
  build_busybox_root "$root/busybox"
  tar -C "$root/busybox" -c . | docker import \
    --change 'CMD ["/bin/sh"]' \
    --change 'ENV PATH=/bin' \
    - shoal-test/busybox:latest >/dev/null
  echo "built shoal-test/busybox:latest"
fi

if [ $force = 1 ] || [ "$(version_of shoal-test/web:latest)" != "$WEB_VERSION" ]; then
  build_busybox_root "$root/web"
  cat > "$root/web/bin/web-serve" <<'SH'
#!/bin/sh
# Answers every GET with this container's hostname (and, on /env, its environment).
port=${PORT:-80}
mkdir -p /www/cgi-bin
hostname > /www/index.html
env > /www/env
# The client's address as the task sees it (the routing mesh should not hide it).
printf '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%%s %%s\\n" "$(hostname)" "$REMOTE_ADDR"\n' > /www/cgi-bin/whoami
chmod 755 /www/cgi-bin/whoami
# httpd as PID 1 would ignore SIGTERM; exit promptly on it as a well-behaved service does.
httpd -f -p "$port" -h /www &
pid=$!
trap 'kill $pid; exit 0' TERM INT
wait $pid
SH
  chmod 755 "$root/web/bin/web-serve"
  tar -C "$root/web" -c . | docker import \
    --change 'CMD ["/bin/web-serve"]' \
    --change 'ENV PATH=/bin' \
    --change 'EXPOSE 80' \
    --change "LABEL shoal.test.version=$WEB_VERSION" \
    - shoal-test/web:latest >/dev/null
  echo "built shoal-test/web:latest"
fi
