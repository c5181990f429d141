#!/usr/bin/env bash
# Make sure the headless browser the dashboard tests drive is here: Debian's `chromium` at
# /usr/bin/chromium. Playwright for Python (a dev dependency) drives it with
# executable_path="/usr/bin/chromium"; its own browser download is never used (it is blocked
# on air-gapped and proxied hosts, and `apt` is the one way this project installs system
# packages).
#
# Idempotent: when /usr/bin/chromium exists it changes nothing. Otherwise (Debian/Ubuntu, as
# root or with passwordless sudo) it runs `apt-get update` and `apt-get install -y chromium`.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

say() { printf 'ensure-browser: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

if [ -x "$CHROMIUM" ]; then
    say "$CHROMIUM is installed"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "$CHROMIUM is missing and there is no apt-get: install Chromium there by hand"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or passwordless sudo) to install chromium"
    SUDO=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a NEEDRESTART_SUSPEND=1
for try in 1 2 3; do
    say "apt-get update"
    if "${SUDO[@]}" apt-get update -q; then
        break
    fi
    [ "$try" -lt 3 ] || die "apt-get update failed three times"
    sleep $((try * 5))
done
say "apt-get install chromium"
"${SUDO[@]}" apt-get install -y -q chromium \
    || die "apt-get install chromium failed"
[ -x "$CHROMIUM" ] || die "chromium is installed but $CHROMIUM is not there"
say "$CHROMIUM is installed"
