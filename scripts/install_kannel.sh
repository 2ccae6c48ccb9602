#!/usr/bin/env bash
# Debian's Kannel (bearerbox, smsbox) and its fake SMSC (kannel-extras), for the real-Kannel end-to-end test.
# Does nothing when they are installed. The package's own service must not run: it would hold Kannel's admin port
# and start boxes nobody asked for. The test starts its own boxes on free ports of 127.0.0.1.
set -euo pipefail

BINARIES=(/usr/sbin/bearerbox /usr/sbin/smsbox /usr/lib/kannel/test/fakesmsc)

installed() {
    local binary
    for binary in "${BINARIES[@]}"; do
        [[ -x "$binary" ]] || return 1
    done
}

installed && exit 0

# Keep the package's postinst from starting the service: policy-rc.d answering 101 forbids it (the Debian way,
# already in place in container images; added here for the install only when the machine has none).
policy=/usr/sbin/policy-rc.d
added_policy=""
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    added_policy=yes
fi
trap 'if [[ -n "$added_policy" ]]; then rm -f "$policy"; fi' EXIT

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kannel kannel-extras >/dev/null

# Wherever it did start, or would at the next boot: stopped and disabled.
/etc/init.d/kannel stop >/dev/null 2>&1 || true
update-rc.d kannel disable >/dev/null 2>&1 || true
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now kannel >/dev/null 2>&1 || true
fi

installed || { echo "kannel and kannel-extras installed, but ${BINARIES[*]} are not all there" >&2; exit 1; }
