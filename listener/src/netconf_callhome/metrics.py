# SPDX-License-Identifier: GPL-3.0-or-later
"""Prometheus metrics of the listener (served only when ``metrics_bind`` is set)."""

from __future__ import annotations

import functools
from typing import Callable, Dict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from netconf_callhome.config import parse_bind
from netconf_callhome.state.registry import STATUSES


def _count(device_counts: Callable[[], Dict[str, int]], status: str) -> float:
    return float(device_counts().get(status, 0))


class Metrics:
    def __init__(self, device_counts: Callable[[], Dict[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.handshakes = Counter(
            "callhome_handshakes_total",
            "Call-home handshakes by transport and result",
            ["transport", "result"],
            registry=self.registry,
        )
        self.failures = Counter(
            "callhome_failures_total",
            "Failed call-home attempts by transport and reason",
            ["transport", "reason"],
            registry=self.registry,
        )
        self.leases = Counter("callhome_leases_total", "Leases granted", ["mode"], registry=self.registry)
        self.lease_errors = Counter(
            "callhome_lease_errors_total", "Lease requests refused", ["code"], registry=self.registry
        )
        self.active_leases = Gauge("callhome_active_leases", "Leases in progress", registry=self.registry)
        self.handshake_seconds = Histogram(
            "callhome_handshake_seconds",
            "Time from TCP accept to NETCONF hello exchanged",
            ["transport"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        devices = Gauge("callhome_devices", "Devices in the registry by status", ["status"], registry=self.registry)
        for status in STATUSES:
            devices.labels(status=status).set_function(functools.partial(_count, device_counts, status))

    def serve(self, bind: str) -> None:
        host, port = parse_bind(bind, 9834)
        start_http_server(port, addr=host or "127.0.0.1", registry=self.registry)
