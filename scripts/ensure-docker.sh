#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`, and that the tools image builds need are here.
#
# Idempotent: on a machine where `docker info` works and the tools are installed it changes
# nothing. Otherwise (Debian/Ubuntu, as root or with sudo) it installs `docker.io` plus
# `debootstrap` (to bootstrap the base image where no image registry is reachable),
# `e2fsprogs` and `mount` (loop-mounted ext4 workspace quotas), starts `dockerd` in the
# background (it outlives this script; log: /var/log/petri-dockerd.log) and waits for it.
#
# Environment:
#   PETRI_DOCKER_WAIT_SECONDS  how long to wait for the engine (default 60)
#   PETRI_DOCKERD_ARGS         extra dockerd arguments, e.g. "--storage-driver=vfs"
#   PETRI_DOCKERD_LOG          dockerd log file (default /var/log/petri-dockerd.log)
set -euo pipefail

WAIT_SECONDS="${PETRI_DOCKER_WAIT_SECONDS:-60}"
DOCKERD_LOG="${PETRI_DOCKERD_LOG:-/var/log/petri-dockerd.log}"
DOCKERD_PIDFILE=/var/run/docker.pid

say() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    fi
fi
as_root() { "${SUDO[@]}" "$@"; }

docker_ok() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install $* by hand (this script knows Debian and Ubuntu only)"
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "need root (or passwordless sudo) to install: $*"
    fi
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a NEEDRESTART_SUSPEND=1
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        local try
        for try in 1 2 3; do
            if as_root apt-get update -q; then
                APT_UPDATED=1
                break
            fi
            [ "$try" -lt 3 ] || die "apt-get update failed three times"
            sleep $((try * 5))
        done
    fi
    say "apt-get install $*"
    as_root apt-get install -y -q -o Dpkg::Options::=--force-confold "$@" \
        || die "apt-get install $* failed"
}

# Packages for the commands workspaces and image builds use, if any is missing.
missing_tools() {
    local wanted=()
    command -v debootstrap >/dev/null 2>&1 || wanted+=(debootstrap)
    command -v mkfs.ext4 >/dev/null 2>&1 || wanted+=(e2fsprogs)
    command -v mount >/dev/null 2>&1 && command -v losetup >/dev/null 2>&1 || wanted+=(mount)
    command -v mountpoint >/dev/null 2>&1 || wanted+=(util-linux)
    [ ${#wanted[@]} -eq 0 ] || printf '%s\n' "${wanted[@]}"
}

# A dockerd that is running (per its pid file) but does not answer yet.
dockerd_running() {
    local pid
    [ -r "$DOCKERD_PIDFILE" ] || return 1
    pid="$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = dockerd ]
}

# Wait up to $1 seconds for `docker info`; with $2 = watch, give up early once the dockerd we
# started has exited (its pid file is gone) instead of waiting out the whole time.
wait_for_docker() {
    local seconds="$1" watch="${2:-}" waited=0
    while [ "$waited" -lt "$seconds" ]; do
        docker_ok && return 0
        if [ -n "$watch" ] && [ "$waited" -ge 10 ] && ! dockerd_running; then
            say "dockerd exited"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    docker_ok
}

start_dockerd() {
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"
    # cgroup v1 hosts without an init system may not have the hierarchies mounted yet.
    if ! mountpoint -q /sys/fs/cgroup 2>/dev/null && command -v cgroupfs-mount >/dev/null 2>&1; then
        as_root cgroupfs-mount || say "cgroupfs-mount failed; dockerd may not start"
    fi
    as_root mkdir -p "$(dirname "$DOCKERD_LOG")"
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    # setsid + nohup: dockerd leaves this script's session and process group, so neither the
    # end of this script nor a CI runner's signal to the job's process group stops it.
    # shellcheck disable=SC2016,SC2086  # $@/$0 expand in the inner sh; ARGS is a word list
    as_root sh -c 'umask 022; exec setsid nohup dockerd "$@" >>"$0" 2>&1 </dev/null &' \
        "$DOCKERD_LOG" ${PETRI_DOCKERD_ARGS:-}
}

# --- tools: always (air-gapped image builds need debootstrap even where Docker runs) ---------
mapfile -t TOOLS < <(missing_tools)
if [ ${#TOOLS[@]} -gt 0 ]; then
    if docker_ok && ! command -v apt-get >/dev/null 2>&1; then
        say "WARNING: missing ${TOOLS[*]} and no apt-get; 'petri images build' needs debootstrap" \
            "when debian:trixie-slim cannot be pulled, workspace quotas need e2fsprogs/mount"
    else
        apt_install "${TOOLS[@]}"
    fi
fi

# --- the engine -------------------------------------------------------------------------------
if docker_ok; then
    say "Docker engine is reachable"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    apt_install docker.io
    # The package's own service start (systemd, or an init script) may bring it up.
    if wait_for_docker 5; then
        say "Docker engine is reachable"
        exit 0
    fi
fi

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    say "starting docker with systemctl"
    as_root systemctl start docker || say "systemctl start docker failed; trying dockerd directly"
    if wait_for_docker 15; then
        say "Docker engine is reachable"
        exit 0
    fi
fi

if dockerd_running; then
    say "dockerd (pid $(cat "$DOCKERD_PIDFILE")) is running; waiting for it to answer"
else
    start_dockerd
fi

if wait_for_docker "$WAIT_SECONDS" watch; then
    say "Docker engine is reachable"
    exit 0
fi

say "ERROR: the Docker engine did not answer 'docker info' (waited up to ${WAIT_SECONDS} s)"
if [ -r "$DOCKERD_LOG" ]; then
    say "last lines of $DOCKERD_LOG:"
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    reason="$(grep -E 'failed to start daemon|level=fatal' "$DOCKERD_LOG" | tail -n 1 || true)"
    [ -z "$reason" ] || say "dockerd: $reason"
fi
say "hints: dockerd needs root, cgroups and iptables; inside a container it needs --privileged;"
say "       extra dockerd flags go in PETRI_DOCKERD_ARGS (e.g. --storage-driver=vfs --iptables=false)"
exit 1
