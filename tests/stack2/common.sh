# SPDX-License-Identifier: GPL-3.0-or-later
# shellcheck shell=bash disable=SC2034
# Shared settings of tests/stack2/build-root.sh and tests/stack2/run.sh (sourced, not run).
#
# The second test stack (issue 8): Python 3.13 with the newest ansible-core 2.21 and
# ansible.netcommon, libnetconf2 3.x and OpenSSH from Debian 13 (trixie), in a Debian 13 root made
# with debootstrap and cached on this machine. Everything that belongs to this stack lives inside
# the root (venv, collections, peers binaries, ansible-test cache); the repository is bind-mounted
# at its own path, and the 2.19 stack's .deps/.cache are hidden behind the stack's own in a private
# mount namespace, so both stacks can run in one checkout at the same time.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
export REPO
STACK2_ROOT=${STACK2_ROOT:-/var/cache/netconf-callhome/trixie-root}
STACK2_SUITE=${STACK2_SUITE:-trixie}
STACK2_MIRROR=${STACK2_MIRROR:-http://deb.debian.org/debian}
# Inside the root:
S2_VENV=/opt/callhome-stack2/venv
S2_DEPS=/opt/callhome-stack2/deps          # bound over $REPO/.deps while the stack runs
S2_CACHE=/opt/callhome-stack2/cache        # bound over $REPO/.cache (sanity staging, wheels)
S2_PEERS_BIN=/opt/callhome-stack2/peers-bin
# The newest ansible-core 2.21.x, and ansible.netcommon/ansible.utils from the newest 'ansible'
# release built for it (ansible 14.x depends on ansible-core 2.21).
S2_ANSIBLE_CORE='ansible-core>=2.21,<2.22'
S2_ANSIBLE='ansible>=14,<15'
S2_DEB_PKGS=(python3 python3-venv gcc make pkg-config libnetconf2-dev libyang-dev libssh-dev
             libssl-dev openssh-server openssh-client socat git shellcheck postgresql nginx libnginx-mod-http-js)

s2_log() { printf '[stack2] %s\n' "$*" >&2; }

# Mount what a chroot needs, plus the repository at its own path. Only call inside a private
# mount namespace (s2_in_namespace): the mounts then vanish with it even if the trap cannot run.
s2_mount_all() {
    local r=$STACK2_ROOT
    mount -t proc proc "$r/proc"
    mount --bind /dev "$r/dev"
    mkdir -p "$r/dev/pts"
    mount --bind /dev/pts "$r/dev/pts"
    mount -t sysfs sysfs "$r/sys" 2>/dev/null || mount --rbind /sys "$r/sys"
    mkdir -p "$r$REPO"
    mount --bind "$REPO" "$r$REPO"
    mkdir -p "$r$S2_DEPS" "$r$S2_CACHE" "$REPO/.deps" "$REPO/.cache"
    mount --bind "$r$S2_DEPS" "$r$REPO/.deps"
    mount --bind "$r$S2_CACHE" "$r$REPO/.cache"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
}

# Unmount everything below the root, deepest first (also what the traps call).
s2_umount_all() {
    local m
    [ -d "$STACK2_ROOT" ] || return 0
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$STACK2_ROOT" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

# Anything mounted below the root? (then it must not be removed)
s2_has_mounts() {
    awk -v r="$STACK2_ROOT" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

# Run a command in the root with a clean environment (the machine's PIP_FIND_LINKS & co. point to
# directories the root does not have).
s2_chroot() {
    env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-180}" \
        DEBIAN_FRONTEND=noninteractive \
        chroot "$STACK2_ROOT" "$@"
}
