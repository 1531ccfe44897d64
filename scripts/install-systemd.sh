#!/usr/bin/env bash
# Install nodecache as a systemd service on this host (or under DESTDIR):
#
#   sudo scripts/install-systemd.sh            # then: systemctl enable --now nodecache.socket nodecache.service
#   scripts/install-systemd.sh /tmp/root       # stage into a directory (packaging, tests)
#
# /opt/nodecache: a virtualenv with nodecache and its dependencies (pip);
# /etc/systemd/system: nodecache.socket and nodecache.service;
# /etc/nodecache/Corefile: the sample, unless one is there already.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-}
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv "$DEST/opt/nodecache"
"$DEST/opt/nodecache/bin/python" -m pip install --quiet --upgrade pip
"$DEST/opt/nodecache/bin/python" -m pip install --quiet .
install -D -m 0644 systemd/nodecache.socket "$DEST/etc/systemd/system/nodecache.socket"
install -D -m 0644 systemd/nodecache.service "$DEST/etc/systemd/system/nodecache.service"
if [ ! -e "$DEST/etc/nodecache/Corefile" ]; then
    install -D -m 0644 systemd/Corefile "$DEST/etc/nodecache/Corefile"
fi
if [ -z "$DEST" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "installed under ${DEST:-/}: edit /etc/nodecache/Corefile, then systemctl enable --now nodecache.socket nodecache.service"
