# SPDX-License-Identifier: GPL-3.0-or-later
"""``callhome-listener``: run the listener and talk to it.

callhome-listener serve [--config FILE] [--ssh 0.0.0.0:4334] [--tls ...] ...
callhome-listener status | devices | device NAME | pending [--scope cluster|node]
callhome-listener approve FINGERPRINT [--device NAME] [--replace]
callhome-listener revoke NAME [--identity KEY_OR_FINGERPRINT]
callhome-listener wait NAME [--timeout 60]
callhome-listener shutdown
callhome-listener secret set NAME REF [--allow-rotation] | unset NAME     (outbound-ssh secrets:
callhome-listener secret group NAME REF --device-id PATTERN... | ungroup NAME | list   references only)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from netconf_callhome.control.client import (
    ControlClient,
    default_control_address,
    default_home,
    parse_address,
    shared_store_of,
)
from netconf_callhome.config import SESSION_MODES
from netconf_callhome.errors import CallHomeError, ControlError, ListenerRunningError, ListenerUnreachableError

# the control API's scopes of pending (and devices): every node's on a shared database, or the
# asked node's own (control.server)
PENDING_SCOPES = ("cluster", "node")
SPAWN_LOCK = "spawn.lock"  # plugins/plugin_utils/embedded_listener.py: one embedded start at a time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callhome-listener", description="NETCONF call-home (RFC 8071) listener")
    parser.add_argument(
        "--control",
        default=os.environ.get("NETCONF_CALLHOME_CONTROL") or None,
        help="control address: unix:/path or tls://host:port (default: %s)" % default_control_address(),
    )
    parser.add_argument("--token-file", help="token for a remote (tls://) listener")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the listener in the foreground")
    serve.add_argument("--config", help="YAML configuration file (default: HOME/listener.yml if it exists)")
    serve.add_argument("--home", help="state directory (trust store, registry, control socket)")
    serve.add_argument(
        "--ssh", action="append", dest="ssh_binds", metavar="HOST:PORT", help="SSH call-home bind (repeatable)"
    )
    serve.add_argument(
        "--tls", action="append", dest="tls_binds", metavar="HOST:PORT", help="TLS call-home bind (repeatable)"
    )
    serve.add_argument(
        "--outbound-ssh",
        action="append",
        dest="outbound_ssh_binds",
        metavar="HOST:PORT",
        help="Junos outbound-ssh bind: devices send a DEVICE-CONN-INFO preamble before SSH (repeatable)",
    )
    serve.add_argument(
        "--restconf",
        action="append",
        dest="restconf_binds",
        metavar="HOST:PORT",
        help="RESTCONF call-home bind, IANA port 4336 (repeatable; needs --tls-client-cert/--tls-client-key)",
    )
    serve.add_argument("--trust-store", dest="trust_store")
    serve.add_argument("--registry")
    serve.add_argument("--control-socket", dest="control_socket")
    serve.add_argument("--username", help="default user name the listener logs in to devices with")
    serve.add_argument("--private-key", help="default private key file for device logins")
    serve.add_argument("--password-file", help="default password file for device logins")
    serve.add_argument("--password-env", help="environment variable holding the default device password")
    serve.add_argument("--tls-client-cert", help="the listener's TLS certificate (presented to devices)")
    serve.add_argument("--tls-client-key")
    serve.add_argument("--device-ca", action="append", help="CA file for devices enrolled by certificate identity")
    serve.add_argument("--keepalive-interval", type=float)
    serve.add_argument("--keepalive-count-max", type=int)
    serve.add_argument("--tcp-keepalive-idle", type=float, help="seconds of silence before TCP probes")
    serve.add_argument("--tcp-keepalive-interval", type=float)
    serve.add_argument("--tcp-keepalive-count", type=int)
    serve.add_argument("--handshake-timeout", type=float)
    serve.add_argument(
        "--channel-hello-timeout",
        type=float,
        help="seconds a new netconf channel has to say hello before the device is served over its one session",
    )
    serve.add_argument(
        "--session-mode",
        action="append",
        dest="session_modes",
        metavar="DEVICE=MODE",
        type=_session_mode,
        help="pin how a device's session is leased: auto, channel or shared (repeatable)",
    )
    serve.add_argument("--max-handshakes", type=int, help="handshakes in progress at once; more are refused")
    serve.add_argument("--metrics", dest="metrics_bind", metavar="HOST:PORT", help="serve Prometheus metrics")
    serve.add_argument("--idle-exit", type=float, help="exit after this many idle seconds (embedded mode)")
    serve.add_argument(
        "--takeover",
        action="store_true",
        help="if an embedded listener (started by the connection plugin) runs on this home, ask it to shut down "
        "and start in its place",
    )
    serve.add_argument("--log-format", choices=("text", "json"))
    serve.add_argument("--log-level")

    sub.add_parser("status", help="listener status")
    devices = sub.add_parser("devices", help="list devices")
    devices.add_argument("--status")
    device = sub.add_parser("device", help="show one device")
    device.add_argument("name")
    pending = sub.add_parser("pending", help="list keys waiting for approval")
    pending.add_argument(
        "--scope",
        choices=PENDING_SCOPES,
        default="cluster",
        help="on a shared database: 'cluster' every node's keys with the node that saw each (default), "
        "'node' only those the listener asked has seen; a single listener has only its own",
    )
    approve = sub.add_parser("approve", help="enroll a pending key")
    approve.add_argument("fingerprint")
    approve.add_argument("--device", default="", help="device name (default: the device it claims to be)")
    approve.add_argument(
        "--replace", action="store_true", help="replace the device's enrolled key of this kind (a key change)"
    )
    revoke = sub.add_parser("revoke", help="remove a device's key (all keys without --identity)")
    revoke.add_argument("name")
    revoke.add_argument("--identity")
    wait = sub.add_parser("wait", help="wait until a device is connected")
    wait.add_argument("name")
    wait.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("shutdown", help="stop the listener")
    _secret_parser(sub)
    return parser


def _secret_parser(sub: Any) -> None:
    """``secret``: outbound-ssh shared secrets, as references, in the trust store file itself (the
    listener re-reads it within a second and is asked to reload when it answers)."""
    secret = sub.add_parser(
        "secret",
        help="outbound-ssh secrets (references env:NAME or file:/path) that verify a device's HMAC",
    )
    secret.add_argument("--home", help="state directory whose trust.json to edit (default: the listener's)")
    secret.add_argument("--trust-store", dest="trust_store", help="trust store file to edit (overrides --home)")
    what = secret.add_subparsers(dest="secret_command", required=True)
    put = what.add_parser("set", help="give a device its own secret; it is enrolled by its first verified call")
    put.add_argument("name", help="device name = the DEVICE-ID it sends")
    put.add_argument("reference", help="env:NAME or file:/absolute/path (mode 0600), never the secret itself")
    put.add_argument(
        "--allow-rotation",
        action="store_true",
        help="a verified call with a new host key replaces the enrolled one (default: refused, pending)",
    )
    unset = what.add_parser("unset", help="remove a device's own secret")
    unset.add_argument("name")
    group = what.add_parser("group", help="one secret for every DEVICE-ID matching a pattern")
    group.add_argument("name", help="group name")
    group.add_argument("reference", help="env:NAME or file:/absolute/path (mode 0600)")
    group.add_argument(
        "--device-id", action="append", required=True, dest="device_ids", metavar="PATTERN",
        help="DEVICE-ID pattern, fnmatch style (br-*), repeatable",
    )
    group.add_argument("--allow-rotation", action="store_true", help="as for set (not advised for a group)")
    ungroup = what.add_parser("ungroup", help="remove a group")
    ungroup.add_argument("name")
    what.add_parser("list", help="the secret references in the trust store (never values)")


def _secret(args: argparse.Namespace) -> Dict[str, Any]:
    from netconf_callhome.policy import trust_ops
    from netconf_callhome.policy.secrets import resolve
    from netconf_callhome.policy.trust_store import TrustStore

    home = os.path.abspath(os.path.expanduser(args.home or default_home()))
    store = TrustStore(args.trust_store or os.path.join(home, "trust.json"))
    # The listener of that home is the one to tell (unless --control names another).
    control = args.control or ("unix:%s" % os.path.join(home, "control.sock") if args.home else None)
    command = args.secret_command
    if command == "list" and not args.trust_store:
        try:  # the listener's own trust store: the shared database on PostgreSQL
            listed: Dict[str, Any] = ControlClient(control, timeout=30).call("secret", action="list")
            return listed
        except ListenerUnreachableError:
            _refuse_file_if_shared(control, "listing the outbound-ssh secrets")
        except ControlError as exc:
            if "'action' must be" not in exc.message:  # an older listener: its file, as below
                raise
        return trust_ops.outbound_ssh_secrets(store)
    if command == "list":
        return trust_ops.outbound_ssh_secrets(store)
    if command in ("set", "group"):
        try:
            resolve(args.reference)
        except CallHomeError as exc:
            # The listener may run with another environment or user: say so, but write it.
            print("callhome-listener: warning: %s (as this process sees it)" % exc.message, file=sys.stderr)
    if not args.trust_store:
        # A running listener writes it to its own trust store: with state_url on PostgreSQL that
        # is the database every node shares, which a file edit here would never reach.
        try:
            result: Dict[str, Any] = ControlClient(control, timeout=30).call(
                "secret",
                action=command,
                name=args.name,
                reference=getattr(args, "reference", None),
                device_ids=getattr(args, "device_ids", None) or [],
                allow_rotation=bool(getattr(args, "allow_rotation", False)),
            )
            result["written_via"] = "listener"
            result["reloaded"] = True  # the listener wrote it and reloaded its policy
            return result
        except ListenerUnreachableError:
            # no listener: the file, as below, unless that listener's store is the database
            _refuse_file_if_shared(control, "the outbound-ssh secret")
    if command == "set":
        result = trust_ops.set_outbound_ssh_secret(store, args.name, args.reference, allow_rotation=args.allow_rotation)
    elif command == "unset":
        result = trust_ops.set_outbound_ssh_secret(store, args.name, None)
    elif command == "group":
        result = trust_ops.set_outbound_ssh_group_secret(
            store, args.name, args.device_ids, args.reference, allow_rotation=args.allow_rotation
        )
    else:
        result = trust_ops.set_outbound_ssh_group_secret(store, args.name, None)
    result["trust_store"] = store.path
    if result["changed"]:
        try:  # a running listener would find the change within a second anyway
            ControlClient(control, timeout=5).call("reload")
            result["reloaded"] = True
        except CallHomeError:
            result["reloaded"] = False
    return result


def _refuse_file_if_shared(control: Optional[str], what: str) -> None:
    """No listener answers at ``control``: refuse to use the trust store file when the listener
    there keeps its trust store in the shared database (no node reads the file then)."""
    address = parse_address(control or default_control_address())
    shared = shared_store_of(address)
    if shared:
        raise ListenerUnreachableError(
            "no listener answers at %s, and it keeps its trust store in %s (state_url): %s is read and written "
            "through a running listener (start it, or --control another node's address); the trust store file "
            "is read by no node (--trust-store FILE to use a file all the same)" % (address, shared, what),
            details={"address": str(address), "trust_store": shared},
        )


def _serve(args: argparse.Namespace) -> int:
    from netconf_callhome.config import load_config
    from netconf_callhome.logs import setup_logging
    from netconf_callhome.service import CallHomeListener

    overrides: Dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "home",
            "ssh_binds",
            "tls_binds",
            "outbound_ssh_binds",
            "restconf_binds",
            "trust_store",
            "registry",
            "control_socket",
            "keepalive_interval",
            "keepalive_count_max",
            "tcp_keepalive_idle",
            "tcp_keepalive_interval",
            "tcp_keepalive_count",
            "handshake_timeout",
            "channel_hello_timeout",
            "max_handshakes",
            "metrics_bind",
            "idle_exit",
            "log_format",
            "log_level",
        )
    }
    if args.session_modes:
        overrides["session_modes"] = dict(args.session_modes)  # refines the file's mapping
    if args.control_socket is None and args.control and args.control.startswith("unix:"):
        overrides["control_socket"] = args.control[5:]
    creds = {
        "username": args.username,
        "private_key_file": args.private_key,
        "password_file": args.password_file,
        "password_env": args.password_env,
    }
    tls = {"client_cert": args.tls_client_cert, "client_key": args.tls_client_key, "device_cas": args.device_ca}
    creds = {k: v for k, v in creds.items() if v is not None}
    tls = {k: v for k, v in tls.items() if v is not None}
    if creds:
        overrides["credentials"] = creds
    if tls:
        overrides["tls"] = tls
    config_file = args.config
    if config_file is None:
        # An embedded listener started by the connection plugin gets no --config: the operator's
        # settings then live in the state directory.
        candidate = os.path.join(os.path.abspath(os.path.expanduser(args.home or default_home())), "listener.yml")
        config_file = candidate if os.path.exists(candidate) else None
    config = load_config(config_file, overrides)
    setup_logging(config.log_format, config.log_level)
    _raise_nofile_limit()
    # Held from the takeover until this listener answers: the connection plugin takes the same
    # lock before it starts an embedded listener, so none starts in between.
    spawn_lock = _lock_spawning(config.home) if args.takeover else None
    try:
        if args.takeover:
            _take_over(config.home)

        async def main() -> None:
            listener = CallHomeListener(config)
            try:
                await listener.start()
            finally:
                if spawn_lock is not None:
                    spawn_lock.close()
            await listener.serve_forever()

        asyncio.run(main())
    finally:
        if spawn_lock is not None:
            spawn_lock.close()
    return 0


def _lock_spawning(home: str, timeout: float = 60.0) -> IO[str]:
    """``<home>/spawn.lock``, the lock plugins/plugin_utils/embedded_listener.py spawns under."""
    import fcntl

    os.makedirs(home, mode=0o700, exist_ok=True)
    handle = open(os.path.join(home, SPAWN_LOCK), "a+", encoding="utf-8")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError:
            if time.monotonic() >= deadline:
                handle.close()
                raise ListenerRunningError(
                    "an embedded listener is being started on %s (%s is held for %.0f s)"
                    % (home, os.path.join(home, SPAWN_LOCK), timeout)
                ) from None
            time.sleep(0.05)


def _take_over(home: str) -> None:
    """Stop the embedded listener holding ``home`` (through its control socket) and wait for it."""
    import logging

    from netconf_callhome.control import instance

    def ask(holder: instance.Holder) -> None:
        socket_path = holder.control_socket or os.path.join(home, "control.sock")
        try:
            ControlClient("unix:%s" % socket_path, timeout=10).call("shutdown")
        except CallHomeError as exc:
            raise ListenerRunningError(
                "cannot ask the listener on %s (%s) to shut down: %s" % (home, holder.describe(), exc.message)
            ) from None

    stopped = instance.takeover(home, ask)
    if stopped is not None:
        logging.getLogger("netconf_callhome.listener").info(
            "event=listener.takeover home=%s old_pid=%s old_mode=%s", home, stopped.pid, stopped.mode
        )


def _session_mode(value: str) -> Tuple[str, str]:
    device, sep, mode = value.partition("=")
    if not sep or not device or mode not in SESSION_MODES:
        raise argparse.ArgumentTypeError(
            "expected DEVICE=MODE with MODE one of %s, got %r" % (", ".join(SESSION_MODES), value)
        )
    return device, mode


def _raise_nofile_limit() -> None:
    """Each held device is one socket; the default soft limit (1024) would cap us at ~1000."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _ts(value: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) if value else "-"


def _table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [
        [
            str(r.get(c, "")) if not c.startswith(("first", "last_c", "last_s", "last_d")) else _ts(r.get(c))
            for c in columns
        ]
        for r in rows
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


class _ReaderGone(Exception):
    """Standard output's reader went away (``callhome-listener pending | head``)."""


def _out(text: str) -> None:
    """Print a result; a closed pipe becomes _ReaderGone (not a traceback, not a socket error)."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise _ReaderGone() from None


def _reader_gone() -> int:
    """Exit quietly, the way a Unix tool killed by SIGPIPE does (status 141 in the shell)."""
    # What is still buffered must not fail again when Python flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Flushed here, not at interpreter exit, where a closed pipe prints "Exception
            # ignored ... BrokenPipeError" (argparse's --help and usage go through this too).
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                raise _ReaderGone() from None
    except _ReaderGone:
        return _reader_gone()


def _main(argv: Optional[Sequence[str]]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "secret":
            _out(json.dumps(_secret(args), indent=2, sort_keys=True))
            return 0
        token = None
        if args.token_file:
            with open(args.token_file, "r", encoding="utf-8") as handle:
                token = handle.read().strip()
        client = ControlClient(args.control, token=token or os.environ.get("NETCONF_CALLHOME_TOKEN"))
        if args.command == "status":
            result = client.call("status")
        elif args.command == "devices":
            result = client.call("devices", **({"status": args.status} if args.status else {}))
            if not args.json:
                # several nodes on one database: which node holds each session (docs/scale-out.md)
                node = ("node",) if any("node" in r for r in result) else ()
                rows = [dict(r, node=r.get("node") or "-") for r in result] if node else result
                _out(_table(rows, ("name", "status") + node + ("transport", "peer", "fingerprint", "last_seen", "last_error")))
                return 0
        elif args.command == "device":
            result = client.call("device", device=args.name)
        elif args.command == "pending":
            result = client.call("pending", scope=args.scope)
            if not args.json:
                # several nodes on one database: the node that saw each key (docs/scale-out.md)
                node = ("node",) if any("node" in r for r in result) else ()
                rows = [dict(r, node=r.get("node") or "-") for r in result] if node else result
                _out(
                    _table(
                        rows,
                        ("fingerprint", "key_type", "transport", "peer")
                        + node
                        + ("reason", "claimed_device", "count", "last_seen"),
                    )
                )
                return 0
        elif args.command == "approve":
            result = client.call("approve", fingerprint=args.fingerprint, device=args.device, replace=args.replace)
        elif args.command == "revoke":
            result = client.call("revoke", device=args.name, identity=args.identity)
        elif args.command == "wait":
            result = client.call("wait", timeout=args.timeout + 10, device=args.name, wait=args.timeout)
        elif args.command == "shutdown":
            result = client.call("shutdown")
        else:  # pragma: no cover - argparse refuses unknown commands
            raise SystemExit(2)
        _out(json.dumps(result, indent=2, sort_keys=True))
        return 0
    except CallHomeError as exc:
        print("callhome-listener: %s" % exc.message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
