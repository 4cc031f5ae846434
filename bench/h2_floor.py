# SPDX-License-Identifier: GPL-3.0-or-later
"""What the h2 library alone costs the listener per RESTCONF call home, without sockets or TLS.

A client H2Connection configured as the listener's (protocol/restconf.py) and a device-side one
in one process: the preface, two GETs (host-meta, the YANG library) and their answers. Only the
client's calls are timed (CPU time): construction, preface, requests, reading the answers. Read
it against bench/restconf_storm.py's TLS floor: it bounds how close the ``h2`` variant can come
to the issue's 1.5x.

    .venv/bin/python bench/h2_floor.py [--connections 2000]
"""

from __future__ import annotations

import argparse
import time

import h2.config
import h2.connection
import h2.events

HOST_META = b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'><Link rel='restconf' href='/restconf'/></XRD>"
PATHS = (b"/.well-known/host-meta", b"/restconf/data/ietf-yang-library:yang-library")


def one_call_home() -> float:
    """CPU seconds the client side of one call home spends in h2."""
    clock = time.process_time
    spent = 0.0
    t = clock()
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
    client.initiate_connection()
    for path in PATHS:
        client.send_headers(client.get_next_available_stream_id(), [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1"), (b":path", path),
            (b"accept", b"application/yang-data+json")], end_stream=True)
    request_bytes = client.data_to_send()
    spent += clock() - t

    device = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    device.initiate_connection()
    for event in device.receive_data(request_bytes):
        if isinstance(event, h2.events.RequestReceived):
            device.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"application/yang-data+json"),
                                                  (b"content-length", str(len(HOST_META)).encode())])
            device.send_data(event.stream_id, HOST_META, end_stream=True)
    answer_bytes = device.data_to_send()

    t = clock()
    for event in client.receive_data(answer_bytes):
        if isinstance(event, h2.events.DataReceived):
            client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    client.data_to_send()  # the SETTINGS ACK and WINDOW_UPDATEs
    return spent + clock() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    for _warm in range(50):
        one_call_home()
    total = sum(one_call_home() for _conn in range(args.connections))
    print("h2 client side per call home: %.3f ms CPU (%d connections)" % (total * 1000 / args.connections, args.connections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
