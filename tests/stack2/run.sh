#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# The second test stack (issue 8): Python 3.13, the newest ansible-core 2.21 and ansible.netcommon,
# libnetconf2 3.x and OpenSSH from Debian 13, run in the Debian 13 root of build-root.sh.
#   tests/stack2/run.sh [PART ...]     PART: unit, peers, sanity (default: all three)
# unit   = tests/unit
# peers  = the tests against real peers (self-checks, pushed configuration, listener, playbooks;
#          libnetconf2 3.x device built in the root into its own bin dir, OpenSSH):
#          STACK2_PEER_TESTS, default below
# sanity = ansible-test sanity through tests/sanity/run_sanity.py
# Each part's pass/fail counts and wall time are printed at the end; the exit status is non-zero
# when a part failed. Mounts live in a private mount namespace and are unmounted by a trap.
set -euo pipefail

# shellcheck source=tests/stack2/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Every test against the libnetconf2 device and OpenSSH: the device's self-checks, configuration
# pushed into libnetconf2 3.x's own ietf-netconf-server implementation (directly and through
# netconf.callhome.config), the listener and playbooks against the real peers; and that
# requirements.txt resolves on Python 3.13 to ansible-core 2.21 (test_requirements_resolve);
# RESTCONF call home against Debian 13's nginx (1.26: HTTP/2 and HTTP/1.1, client certificates);
# AWX as it runs on the newest stack: a job through ansible-runner with the credential type's
# injected environment, and ansible-builder create on the EE definition.
PEER_TESTS=${STACK2_PEER_TESTS:-tests/integration/test_lnc2_selfcheck.py tests/integration/test_lnc2_extra_channels.py tests/integration/test_lnc2_pushed_config.py tests/integration/test_config_module_lnc2.py tests/integration/test_listener_real_peers.py tests/integration/test_playbook_real_peers.py tests/integration/test_restconf_nginx.py tests/integration/test_listener_restconf.py tests/integration/test_requirements_resolve.py tests/integration/test_awx_runner.py tests/integration/test_ee_builder.py}

if [ -z "${S2_IN_NAMESPACE:-}" ]; then
    [ "$(id -u)" = 0 ] || { s2_log "run.sh needs root (chroot, mount)"; exit 1; }
    "$REPO/tests/stack2/build-root.sh"
    S2_IN_NAMESPACE=1 exec unshare --mount --propagation private -- "$0" "$@"
fi

trap s2_umount_all EXIT
s2_mount_all

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(unit peers sanity)
coll=$REPO/.collections/ansible_collections/netconf/callhome
summary=()
failed=0

# Run one part inside the root: run_part NAME COMMAND (a shell command run in the repository).
run_part() {
    local name=$1 cmd=$2 start rc counts log verdict
    log=$(mktemp)
    s2_log "== $name: $cmd"
    start=$(date +%s)
    set +e
    s2_chroot /bin/bash -c "
        set -e
        export PATH=$S2_VENV/bin:\$PATH CALLHOME_PEERS_BIN=$S2_PEERS_BIN ANSIBLE_CONFIG=$REPO/ansible.cfg
        [ -e $coll ] || { mkdir -p $REPO/.collections/ansible_collections/netconf && ln -sfn ../../.. $coll; }
        cd $REPO
        $cmd" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    # (|| true: a grep that finds nothing must not end the script under set -e / pipefail)
    counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped)|[0-9]+ (passed|failed)' "$log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//' || true)
    if [ "$name" = sanity ]; then
        counts=$(grep -E '^ran and (passed|FAILED) \([0-9]+\)|^skipped \([0-9]+\)' "$log" | sed 's/:.*//' | tr '\n' ' ' || true)
        failed_tests=$(grep -E '^ran and FAILED' "$log" | sed 's/^[^:]*: *//' || true)
        [ -z "$failed_tests" ] || counts="$counts (failed: $failed_tests)"
    fi
    # A skip is not a pass: the part still passes (its reasons are printed above, -rs), but the
    # summary says how many tests did not run.
    if [ "$rc" = 0 ] && grep -qE '[0-9]+ skipped' <<<"$counts"; then
        verdict="PASS, with skips (reasons above)"
    elif [ "$rc" = 0 ]; then
        verdict=PASS
    else
        verdict="FAIL(rc=$rc)"
    fi
    summary+=("$(printf '%-7s %s  %4ss  %s' "$name" "$verdict" "$(($(date +%s) - start))" "$counts")")
    [ "$rc" = 0 ] || failed=1
    rm -f "$log"
}

total_start=$(date +%s)
for part in "${parts[@]}"; do
    case $part in
    unit)
        run_part unit "cd $coll && CALLHOME_REQUIRE_PEERS=1 python -m pytest -o pythonpath=$REPO/.collections -q -rs -p no:cacheprovider --import-mode=importlib tests/unit" ;;
    peers)
        run_part peers "make -C tests/peers BIN_DIR=$S2_PEERS_BIN >/dev/null && cd $coll && CALLHOME_REQUIRE_PEERS=1 python -m pytest -o pythonpath=$REPO/.collections -q -rs -p no:cacheprovider --import-mode=importlib $PEER_TESTS" ;;
    sanity)
        run_part sanity "python tests/sanity/run_sanity.py" ;;
    *)
        s2_log "unknown part '$part' (unit, peers, sanity)"; exit 2 ;;
    esac
done

# shellcheck disable=SC2016  # ${Version} is dpkg-query's
s2_log "== stack 2 ($(s2_chroot "$S2_VENV/bin/python" -c 'import sys, ansible; print("Python", sys.version.split()[0], "ansible-core", ansible.__version__)'), $(s2_chroot dpkg-query -W -f='libnetconf2 ${Version}' libnetconf2-dev)): $(($(date +%s) - total_start)) s"
for line in "${summary[@]}"; do
    s2_log "$line"
done
exit "$failed"
