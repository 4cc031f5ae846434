# SPDX-License-Identifier: GPL-3.0-or-later
"""One address for devices: Debian's HAProxy (tests/peers/haproxy_peer.py) in TCP mode with
``send-proxy-v2`` in front of listener nodes (``proxy_protocol_from``).

HAProxy connects to the nodes from 127.0.0.2; the simulated devices call it from 127.0.0.1.
Each node must log, record (registry ``peer``) and judge (admission) the device's address from
the PROXY header, on every kind of port (SSH, outbound-ssh, the single call-home port); HAProxy's
health checks (LOCAL headers) are closed quietly; a PROXY header from an address that is not a
listed balancer is refused; a balancer that sends no header is refused. Three nodes share one
PostgreSQL state_url (tests/peers/postgres_peer.py) and HAProxy spreads the fleet over them."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from harness import running, wait_until

BALANCER = "127.0.0.2"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

pytestmark = pytest.mark.timeout(240)


def _config(path: Path, **options: Any) -> Path:
    import yaml

    data: Dict[str, Any] = {"proxy_protocol_from": ["%s/32" % BALANCER], "proxy_protocol_timeout": 2}
    data.update(options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    os.chmod(path, 0o600)  # it may hold the database password
    return path


def _port(lst: Any, kind: str) -> int:
    return int(lst.status[kind][0].rsplit(":", 1)[1])


def _clients(haproxy: Any) -> List[str]:
    """The device addresses HAProxy saw (its tcplog: ``client_ip:port [date] frontend ...``),
    logged when each connection ends and at the start of each one (``option logasap`` is off:
    at the end), so they are read after the devices went away."""
    return re.findall(r"^(\d+\.\d+\.\d+\.\d+:\d+) \[", haproxy.log(), re.M)


def _device_lines(log: str) -> List[str]:
    return [line for line in log.splitlines() if "event=device.connected" in line]


def _v2(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 4334) -> bytes:
    addresses = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


def _closed_by_listener(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the other side closes within ``timeout`` (whatever it said first: the listener,
    an SSH client, sends its own banner)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


@pytest.mark.parametrize("kind", ["ssh", "ssh-v1", "outbound_ssh", "callhome", "tls"])
def test_devices_through_haproxy_are_known_by_their_own_address(listener_factory, fleet, haproxy, tmp_path, kind):
    """One node (SQLite), one port kind at a time, HAProxy in front with send-proxy-v2 (ssh-v1:
    send-proxy, the text header) and health checks: the device is connected under its own
    address (127.0.0.1:<its port>, the client HAProxy logged), never HAProxy's (127.0.0.2), and
    the health checks leave no trace."""
    send_proxy = "v1" if kind == "ssh-v1" else "v2"
    kind = kind.replace("-v1", "")
    home = tmp_path / "home"
    options: Dict[str, Any] = {}
    extra: List[str] = []
    names = ["sim0001", "sim0002"]
    if kind == "outbound_ssh":
        options["outbound_ssh_binds"] = ["127.0.0.1:0"]
        extra = ["--outbound-ssh-preamble"]
    elif kind == "callhome":
        options["callhome_binds"] = ["127.0.0.1:0"]
    if kind == "tls":
        import pki  # tests/peers
        from harness import enroll

        creds = pki.make_pki(tmp_path / "pki", device_name="sim0001")
        options["tls_binds"] = ["127.0.0.1:0"]
        options["tls"] = {"client_cert": str(creds.listener_cert.cert_path), "client_key": str(creds.listener_cert.key_path)}
        enroll(home, "sim0001", tls_fp=creds.device_self_signed.fingerprint)
        extra = ["--tls-cert", str(creds.device_self_signed.cert_path), "--tls-key", str(creds.device_self_signed.key_path)]
        names = ["sim0001"]  # one certificate: one device
    else:
        fleet.enroll(home / "trust.json", names)
    # DEBUG: the listener logs each health check it closes (event=proxy.health_check), which
    # is how this test knows that some went by (asyncssh stays at WARNING, logs.setup_logging)
    config = str(_config(tmp_path / "listener.yml", **options))
    lst = listener_factory("--config", config, "--log-level", "DEBUG", home=home).start()
    lb = haproxy([("127.0.0.1", _port(lst, kind))], send_proxy=send_proxy)
    lb.wait_up()
    checks = lst.log().count("event=proxy.health_check ")
    with running(fleet.simulator(lb.port, len(names), *extra, wait_connected=len(names))):
        records = [lst.wait_device(name, "connected") for name in names]
        peers = sorted(rec["peer"] for rec in records)
        for peer in peers:
            assert peer.startswith("127.0.0.1:"), peers
        lines = _device_lines(lst.log())
        assert len(lines) == len(names) and all("peer=127.0.0.1:" in line for line in lines), lines
        assert all("transport=%s" % ("tls" if kind == "tls" else "ssh") in line for line in lines), lines
        # several more health checks (every 300 ms) reach the node while the devices are held
        wait_until(
            lambda: lst.log().count("event=proxy.health_check ") >= checks + 3,
            20,
            "three more health checks",
            detail=lambda: lst.log()[-3000:],
        )
    wait_until(lambda: len(_clients(lb)) >= len(names), 20, "HAProxy's log of the connections", detail=lb.log)
    # the recorded peers are exactly the clients HAProxy saw (address and port)
    assert set(peers) <= set(_clients(lb)), (peers, _clients(lb))
    log = lst.log()
    assert "peer=%s" % BALANCER not in log and "peer_ip=%s" % BALANCER not in log
    assert "event=proxy.refused" not in log and "event=handshake.failed" not in log, log[-3000:]


def test_three_nodes_on_postgresql_behind_one_address(listener_factory, fleet, haproxy, postgres, tmp_path):
    """Three nodes sharing a PostgreSQL state_url behind one HAProxy: six devices call the one
    address and land on all three nodes (round robin); every row in the shared registry holds the
    device's own address, and every node logged it."""
    database = "haproxy_%d" % os.getpid()
    url = postgres.create_database(database)
    names = ["sim%04d" % i for i in range(1, 7)]
    nodes: Dict[str, Any] = {}
    for node in ("node-a", "node-b", "node-c"):
        home = tmp_path / node
        fleet.enroll(home / "trust.json", names)
        config = _config(tmp_path / ("%s.yml" % node), state_url=url, node_name=node)
        nodes[node] = listener_factory("--config", str(config), home=home).start()
    lb = haproxy([("127.0.0.1", lst.ssh_port) for lst in nodes.values()])
    lb.wait_up()
    rows = "SELECT name, status, coalesce(node, '-'), doc->>'peer' FROM devices ORDER BY name"
    with running(fleet.simulator(lb.port, len(names), "--stagger", "0.05", wait_connected=len(names))):

        def all_connected() -> Optional[List[List[str]]]:
            got = postgres.psql(rows, database)
            return got if len(got) == len(names) and all(r[1] == "connected" for r in got) else None

        got = wait_until(all_connected, 30, "six devices connected in PostgreSQL", detail=lambda: str(postgres.psql(rows, database)))
        assert {r[2] for r in got} == set(nodes), got  # HAProxy spread them over every node
        for name, _status, node, peer in got:
            assert peer.startswith("127.0.0.1:"), got
            assert "event=device.connected device=%s peer=%s " % (name, peer) in nodes[node].log()
        servers = lb.servers()
        assert all(int(s["stot"]) >= 2 for s in servers.values()), servers
    wait_until(lambda: len(_clients(lb)) >= len(names), 20, "HAProxy's log of the connections", detail=lb.log)
    assert {r[3] for r in got} <= set(_clients(lb))
    for lst in nodes.values():
        log = lst.log()
        assert "peer=%s" % BALANCER not in log and "event=proxy.refused" not in log


def test_a_proxy_header_from_elsewhere_is_refused(listener_factory, fleet, haproxy, tmp_path):
    """The node believes 127.0.0.2 only. A PROXY header from 127.0.0.1 (v2 on the SSH port, v1
    on the outbound-ssh port: ports where the device speaks first, so the accept path waits for
    its first bytes) is refused as bad input, logged with the sender's own address and never
    with the address it claimed. On the single call-home port (where a silent peer is a TLS
    device, so the accept path only looks at bytes already there) it is refused too: by the
    accept path, or, when it came later, by the first-bytes detection. A device that calls
    directly (no header) still gets in."""
    home = tmp_path / "home"
    fleet.enroll(home / "trust.json", ["sim0001"])
    options = {"callhome_binds": ["127.0.0.1:0"], "outbound_ssh_binds": ["127.0.0.1:0"]}
    lst = listener_factory("--config", str(_config(tmp_path / "listener.yml", **options)), home=home).start()
    sent = [
        ("ssh", lst.ssh_port, _v2("203.0.113.9", 40001) + b"SSH-2.0-forged\r\n"),
        ("outbound_ssh", _port(lst, "outbound_ssh"), b"PROXY TCP4 203.0.113.10 127.0.0.1 40002 4334\r\nMSG-ID: x\r\n"),
        ("callhome", _port(lst, "callhome"), b"PROXY TCP4 203.0.113.11 127.0.0.1 40003 4334\r\nSSH-2.0-forged\r\n"),
    ]
    own = {}
    for kind, port, data in sent:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(data)
            own[kind] = "127.0.0.1:%d" % sock.getsockname()[1]
            assert _closed_by_listener(sock), kind
    for kind in ("ssh", "outbound_ssh"):
        lst.wait_log("event=handshake.failed peer=%s transport=%s reason=proxy-header-untrusted" % (own[kind], kind))
    log = lst.wait_log("event=handshake.failed peer=%s transport=callhome reason=" % own["callhome"])
    assert re.search(
        r"event=handshake\.failed peer=%s transport=callhome reason=(proxy-header-untrusted|unknown-protocol) "
        % re.escape(own["callhome"]),
        log,
    ), log[-3000:]
    assert "not in proxy_protocol_from" in log
    # the claimed addresses were never taken for a peer
    assert not re.search(r"peer(_ip)?=203\.0\.113", log) and "203.0.113.9" not in log and "203.0.113.10" not in log
    # no header, not a balancer: an ordinary device on the same port
    with running(fleet.simulator(lst.ssh_port, 1, wait_connected=1)):
        assert lst.wait_device("sim0001", "connected")["peer"].startswith("127.0.0.1:")


def test_a_balancer_without_send_proxy_is_refused(listener_factory, fleet, haproxy, tmp_path):
    """HAProxy (127.0.0.2, listed) configured without send-proxy: its connections do not start
    with a header, so they are refused (event=proxy.refused reason=proxy-missing, counted in
    callhome_failures_total{transport="proxy"}) and the device never connects; the balancer's
    address is not blocked for it (block_failures 2)."""
    home = tmp_path / "home"
    fleet.enroll(home / "trust.json", ["sim0001"])
    metrics = "127.0.0.1:%d" % _free_port()
    config = _config(tmp_path / "listener.yml", block_failures=2, block_admit_rate=0, metrics_bind=metrics)
    lst = listener_factory("--config", str(config), home=home).start()
    lb = haproxy([("127.0.0.1", lst.ssh_port)], send_proxy="")
    sim = fleet.simulator(lb.port, 1)
    try:
        log = lst.wait_log("event=proxy.refused balancer=%s:" % BALANCER)
        wait_until(lambda: lst.log().count("reason=proxy-missing") >= 3, 20, "three refusals", detail=lst.log)
        log = lst.log()
        assert "event=peer.blocked" not in log
        assert "event=device.connected" not in log
        assert _metric(metrics, 'callhome_failures_total{reason="proxy-missing",transport="proxy"}') >= 3
    finally:
        sim.stop()


def test_blocking_applies_to_the_device_address_not_the_balancer(listener_factory, fleet, haproxy, tmp_path):
    """Garbage from 127.0.0.5 through HAProxy: the node counts the failures against 127.0.0.5 and
    blocks it (block_failures 3, hard block), while the simulated devices (127.0.0.1) still
    connect through the same HAProxy; HAProxy's 127.0.0.2 is never blocked."""
    home = tmp_path / "home"
    fleet.enroll(home / "trust.json", ["sim0001"])
    config = _config(tmp_path / "listener.yml", block_failures=3, block_window=60, block_seconds=60, block_admit_rate=0)
    lst = listener_factory("--config", str(config), home=home).start()
    lb = haproxy([("127.0.0.1", lst.ssh_port)])
    lb.wait_up()
    for _attempt in range(4):
        with socket.socket() as sock:
            sock.bind(("127.0.0.5", 0))
            sock.connect(("127.0.0.1", lb.port))
            sock.sendall(b"SSH-1.0-not-a-device\r\n")  # an SSH version the listener refuses at once
            assert _closed_by_listener(sock)
    log = lst.wait_log("event=peer.blocked peer_ip=127.0.0.5 ")
    assert "peer=127.0.0.5:" in log and "peer_ip=%s" % BALANCER not in log
    # the blocked address is turned away at once (no handshake), through the same balancer
    failures = lst.log().count("event=handshake.failed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.5", 0))
        sock.connect(("127.0.0.1", lb.port))
        sock.sendall(b"SSH-1.0-not-a-device\r\n")
        assert _closed_by_listener(sock)
    with running(fleet.simulator(lb.port, 1, wait_connected=1)):
        assert lst.wait_device("sim0001", "connected")["peer"].startswith("127.0.0.1:")
    assert lst.log().count("event=handshake.failed") == failures
    assert "peer_ip=%s" % BALANCER not in lst.log()


def test_devices_move_to_the_other_node_when_one_is_killed(listener_factory, fleet, haproxy, tmp_path):
    """kill -9 of a node behind HAProxy: its devices' connections drop, they redial the one
    address, and HAProxy (health checks every 300 ms, redispatch) takes them to the node left,
    which knows them by their own address."""
    names = ["sim%04d" % i for i in range(1, 5)]
    nodes: Dict[str, Any] = {}
    for node in ("node-a", "node-b"):
        home = tmp_path / node
        fleet.enroll(home / "trust.json", names)
        nodes[node] = listener_factory("--config", str(_config(tmp_path / ("%s.yml" % node))), home=home).start()
    lb = haproxy([("127.0.0.1", lst.ssh_port) for lst in nodes.values()])
    lb.wait_up()
    with running(fleet.simulator(lb.port, len(names), wait_connected=len(names))):

        def connected(node: str) -> List[str]:
            return sorted(d["name"] for d in nodes[node].call("devices") if d["status"] == "connected")

        wait_until(lambda: len(connected("node-a")) + len(connected("node-b")) == len(names), 30, "all devices connected")
        on_a = connected("node-a")
        assert on_a, "round robin put no device on node-a"
        started = time.monotonic()
        nodes["node-a"].proc.kill()  # SIGKILL: no goodbye to the devices
        nodes["node-a"].proc.wait(10)
        wait_until(
            lambda: connected("node-b") == names,
            30,
            "every device connected on node-b",
            detail=lambda: "node-b: %s\n%s" % (connected("node-b"), nodes["node-b"].log()[-3000:]),
        )
        moved_in = time.monotonic() - started
        for name in on_a:
            record = nodes["node-b"].call("device", device=name)
            assert record["peer"].startswith("127.0.0.1:"), record
        assert moved_in < 30
        print("moved %d device(s) from the killed node in %.2f s" % (len(on_a), moved_in))
    log = nodes["node-b"].log()
    assert "peer=%s" % BALANCER not in log and "event=proxy.refused" not in log


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric(bind: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen("http://%s/metrics" % bind, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
