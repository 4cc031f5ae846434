#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Make (or check) the Debian 13 root of the second test stack (issue 8), cached on this machine:
#   $STACK2_ROOT (default /var/cache/netconf-callhome/trixie-root)
# Idempotent. Two stamps in the root hold hashes of their inputs; a part is rebuilt when its
# stamp is missing or its inputs changed:
#   .stamp-system  debootstrap --variant=minbase trixie + the Debian packages (S2_DEB_PKGS)
#   .stamp-python  the Python 3.13 venv (newest ansible-core 2.21.x, requirements*.txt) and
#                  ansible.netcommon / ansible.utils from the newest 'ansible' 14.x wheel, in the
#                  root's deps dir
#   .stamp-listener the listener distribution installed editable from $REPO/listener. Its hash
#                  holds the checkout's path: the root outlives a checkout (CI clones main to a
#                  new path on a machine where an earlier clone built the root), and an editable
#                  install that points at a vanished path fails every import.
# Needs root (debootstrap, chroot, mount). Usage: tests/stack2/build-root.sh [--force]
set -euo pipefail

# shellcheck source=tests/stack2/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

system_hash() {
    printf '%s\n' "$STACK2_SUITE" "$STACK2_MIRROR" "${S2_DEB_PKGS[@]}" | sha256sum | cut -d' ' -f1
}

python_hash() {
    {
        printf '%s\n' "$S2_ANSIBLE_CORE" "$S2_ANSIBLE" "$S2_VENV" "$S2_DEPS"
        cat "$REPO/requirements.txt" "$REPO/requirements-test.txt" "$REPO/listener/pyproject.toml"
        pip_conf
    } | sha256sum | cut -d' ' -f1
}

listener_hash() {
    { printf '%s\n' "$REPO" "$S2_VENV"; cat "$REPO/listener/pyproject.toml"; } | sha256sum | cut -d' ' -f1
}

# The machine's pip configuration for the root: find-links and extra-index-url entries that are
# local paths (directories the root does not have) are dropped; the rest is kept as it is.
pip_conf() {
    [ -f /etc/pip.conf ] || return 0
    awk '
        /^[[:space:]]*(find-links|find_links|extra-index-url|extra_index_url)[[:space:]]*=/ {
            v = $0; sub(/^[^=]*=[[:space:]]*/, "", v)
            if (v ~ /^(\/|file:)/ || v == "") { skip = 1; next }
        }
        skip && /^[[:space:]]+[^[:space:]]/ { next }   # continuation lines of a dropped entry
        { skip = 0; print }
    ' /etc/pip.conf
}

stamp_ok() {   # stamp_ok NAME HASH
    [ -f "$STACK2_ROOT/.stamp-$1" ] && [ "$(cat "$STACK2_ROOT/.stamp-$1")" = "$2" ]
}

build_system() {
    if s2_has_mounts; then
        s2_log "something is mounted below $STACK2_ROOT; refusing to remove it"
        exit 1
    fi
    if ! command -v debootstrap >/dev/null; then
        s2_log "installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    rm -rf --one-file-system "$STACK2_ROOT" "$STACK2_ROOT.new"
    mkdir -p "$(dirname "$STACK2_ROOT")"
    s2_log "debootstrap --variant=minbase $STACK2_SUITE $STACK2_ROOT.new $STACK2_MIRROR"
    debootstrap --variant=minbase "$STACK2_SUITE" "$STACK2_ROOT.new" "$STACK2_MIRROR" >"$STACK2_ROOT.log" 2>&1 || {
        tail -n 30 "$STACK2_ROOT.log" >&2
        exit 1
    }
    mv "$STACK2_ROOT.new" "$STACK2_ROOT"
    # no services may start inside the root (openssh-server's postinst would try)
    printf '#!/bin/sh\nexit 101\n' >"$STACK2_ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$STACK2_ROOT/usr/sbin/policy-rc.d"
}

install_packages() {
    s2_log "apt-get install (in the root): ${S2_DEB_PKGS[*]}"
    s2_chroot apt-get update -qq
    s2_chroot apt-get install -y -qq --no-install-recommends "${S2_DEB_PKGS[@]}" >/dev/null
    s2_chroot apt-get clean
}

# Trust and pip configuration of the machine (PyPI may only be reachable through a proxy whose CA
# only the machine's bundle has). Copied on every run: cheap, and follows changes on the machine.
copy_trust() {
    mkdir -p "$STACK2_ROOT/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$STACK2_ROOT/etc/ssl/certs/ca-certificates.crt"
    pip_conf >"$STACK2_ROOT/etc/pip.conf"
}

build_python() {
    local wheel_dir=$S2_CACHE/ansible-wheel
    s2_log "venv $S2_VENV: $S2_ANSIBLE_CORE, listener (editable), requirements"
    rm -f "$STACK2_ROOT/.stamp-listener"
    rm -rf "${STACK2_ROOT:?}$S2_VENV" "${STACK2_ROOT:?}$S2_DEPS/ansible_collections"
    s2_chroot python3 -m venv "$S2_VENV"
    s2_chroot "$S2_VENV/bin/pip" install -q --upgrade pip
    s2_chroot "$S2_VENV/bin/pip" install -q "$S2_ANSIBLE_CORE" -e "$REPO/listener"
    s2_chroot "$S2_VENV/bin/pip" install -q "$S2_ANSIBLE_CORE" \
        -r "$REPO/requirements.txt" -r "$REPO/requirements-test.txt"
    s2_log "ansible.netcommon and ansible.utils from the newest $S2_ANSIBLE wheel"
    rm -rf "${STACK2_ROOT:?}$wheel_dir" && mkdir -p "$STACK2_ROOT$wheel_dir" "$STACK2_ROOT$S2_DEPS/ansible_collections/ansible"
    s2_chroot "$S2_VENV/bin/pip" download -q --no-deps "$S2_ANSIBLE" -d "$wheel_dir"
    s2_chroot "$S2_VENV/bin/python" -c "
import glob, shutil, sys, zipfile
whl = glob.glob('$wheel_dir/ansible-*.whl')[0]
z = zipfile.ZipFile(whl)
for name in z.namelist():
    if name.startswith(('ansible_collections/ansible/netcommon/', 'ansible_collections/ansible/utils/')):
        z.extract(name, '$S2_DEPS')
print('[stack2] extracted from', whl.rsplit('/', 1)[-1], file=sys.stderr)
shutil.rmtree('$wheel_dir')
"
    s2_chroot "$S2_VENV/bin/python" -c "import ansible, sys; print('[stack2] Python', sys.version.split()[0], 'ansible-core', ansible.__version__, file=sys.stderr)"
}

# The listener, editable from this checkout (no dependencies: the venv has them). Reinstalled when
# the checkout moved, in seconds, instead of rebuilding the venv.
install_listener() {
    s2_log "listener distribution (editable) from $REPO/listener"
    s2_chroot "$S2_VENV/bin/pip" install -q --no-deps -e "$REPO/listener"
    s2_chroot "$S2_VENV/bin/python" -c "
import netconf_callhome, sys
want = '$REPO/listener/src/netconf_callhome/__init__.py'
if netconf_callhome.__file__ != want:
    sys.exit(f'[stack2] netconf_callhome imports from {netconf_callhome.__file__}, not {want}')
"
}

main() {
    local force=0 sys_hash py_hash lst_hash
    [ "${1:-}" = "--force" ] && force=1
    [ "$(id -u)" = 0 ] || { s2_log "build-root.sh needs root (debootstrap, chroot, mount)"; exit 1; }
    sys_hash=$(system_hash)
    py_hash=$(python_hash)
    lst_hash=$(listener_hash)
    if [ "$force" = 0 ] && stamp_ok system "$sys_hash" && stamp_ok python "$py_hash" && stamp_ok listener "$lst_hash"; then
        copy_trust
        s2_log "root $STACK2_ROOT is up to date"
        return 0
    fi
    if [ -z "${S2_IN_NAMESPACE:-}" ]; then
        # one build at a time per machine; the rest runs in a private mount namespace so no mount
        # can outlive this script
        mkdir -p "$(dirname "$STACK2_ROOT")"
        exec 9>"$STACK2_ROOT.lock"
        flock 9
        S2_IN_NAMESPACE=1 exec unshare --mount --propagation private -- "$0" "$@"
    fi
    if [ "$force" = 1 ] || ! stamp_ok system "$sys_hash" || [ ! -x "$STACK2_ROOT/usr/bin/python3" ]; then
        rm -f "$STACK2_ROOT/.stamp-system" "$STACK2_ROOT/.stamp-python"
        build_system
    fi
    trap s2_umount_all EXIT
    s2_mount_all
    if ! stamp_ok system "$sys_hash"; then
        install_packages
        echo "$sys_hash" >"$STACK2_ROOT/.stamp-system"
    fi
    copy_trust
    if [ "$force" = 1 ] || ! stamp_ok python "$py_hash"; then
        rm -f "$STACK2_ROOT/.stamp-python"
        build_python
        echo "$py_hash" >"$STACK2_ROOT/.stamp-python"
    fi
    if [ "$force" = 1 ] || ! stamp_ok listener "$lst_hash"; then
        install_listener
        echo "$lst_hash" >"$STACK2_ROOT/.stamp-listener"
    fi
    s2_log "root $STACK2_ROOT is ready"
}

main "$@"
