#!/usr/bin/env bash
# Make sure Node.js >= 20 is here for the JavaScript client's tests (`node --test`): Debian's
# `nodejs` package (trixie ships 20). Idempotent: a `node` of 20 or later changes nothing.
# Otherwise (Debian/Ubuntu, as root or with passwordless sudo) it runs `apt-get update` and
# `apt-get install -y nodejs`; an older Node afterwards is an error that says so.
set -euo pipefail

say() { printf 'ensure-node: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

if command -v node >/dev/null 2>&1 && [ "$(major)" -ge 20 ]; then
    say "node $(node --version) is installed"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "Node.js >= 20 is missing and there is no apt-get"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or passwordless sudo) to install nodejs"
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
say "apt-get install nodejs"
"${SUDO[@]}" apt-get install -y -q nodejs || die "apt-get install nodejs failed"
[ "$(major)" -ge 20 ] || die "node $(node --version 2>/dev/null) is older than 20"
say "node $(node --version) is installed"
