# SPDX-License-Identifier: GPL-3.0-or-later
"""``netconf.callhome.enroll`` for a RESTCONF device, in real ``ansible-playbook`` runs against the
listener process and Debian's nginx calling ``--restconf`` over a reversed TCP connection: the
certificate the device presented is pending under transport ``restconf``; the module approves it
(``source: pending``, ``transport: restconf``, with HTTP basic credentials) and the listener's
RESTCONF verification then accepts the device; a pending certificate of another transport is
refused by name; a pinned ``tls_fingerprint`` written by the module is accepted as well."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from harness import wait_until
from test_enroll_module import enroll as play_enroll  # same directory: one ansible-playbook run per task
from test_listener_restconf import DEVICE, nginx, pending_restconf, restconf_args, restconf_port

from netconf_callhome.policy.trust_store import TrustStore

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    from pki import make_pki  # tests/peers

    return make_pki(tmp_path / "pki", device_name=DEVICE)


def test_pending_restconf_certificate_enrolled_by_the_module_then_accepted(tmp_path: Path, pki: Any,
                                                                           listener_factory: Any) -> None:
    password = "enroll-Pa55-not-logged"
    secret = tmp_path / "http-password"
    secret.write_text(password + "\n")
    lst = listener_factory(*restconf_args(pki)).start()
    control = "unix:%s" % lst.status["control_socket"]
    peer = nginx(restconf_port(lst), pki, redial=True, retry=0.3, basic_auth=("nms", password))
    try:
        peer.start_dialing()
        (entry,) = wait_until(lambda: pending_restconf(lst), 30, "the certificate to be pending",
                              detail=lambda: lst.log()[-3000:])
        fingerprint = entry["fingerprint"]

        wrong = play_enroll(tmp_path, {"device": DEVICE, "source": "pending", "transport": "tls",
                                       "expected_fingerprint": fingerprint, "listener": control})
        assert wrong.get("failed") is True and "came over restconf, not tls" in wrong["msg"], wrong
        checked = play_enroll(tmp_path, {"device": DEVICE, "source": "pending", "transport": "restconf",
                                         "expected_fingerprint": fingerprint, "listener": control}, "--check")
        assert checked["changed"] is True and pending_restconf(lst), "check mode approves nothing"

        done = play_enroll(tmp_path, {"device": DEVICE, "source": "pending", "transport": "restconf",
                                      "expected_fingerprint": fingerprint, "listener": control,
                                      "credentials": {"username": "nms", "password_file": str(secret)}}, "--diff")
        assert done["changed"] is True and not done.get("failed"), done
        assert done["transport"] == "restconf" and done["kind"] == "tls_fingerprints"
        rec = lst.wait_device(DEVICE, "connected", timeout=30)
        assert rec["transport"] == "restconf" and rec["fingerprint"] == pki.device_cert.fingerprint
        assert pending_restconf(lst) == []
        stored = TrustStore(lst.status["trust_store"]).load()["devices"][DEVICE]
        assert stored["credentials"] == {"username": "nms", "password_file": str(secret)}
        # the credentials filed with the certificate were used: nginx logged user nms, status 200
        library_read = re.compile(r' - nms \[[^]]*\] "GET /restconf/data/ietf-yang-library:yang-library HTTP/[0-9.]+" 200 ')
        wait_until(lambda: library_read.search(peer.access_log()), 10, "the authenticated YANG library read",
                   detail=peer.access_log)

        again = play_enroll(tmp_path, {"device": DEVICE, "source": "pending", "transport": "restconf",
                                       "expected_fingerprint": fingerprint, "listener": control})
        assert again["changed"] is False and not again.get("failed"), again
    finally:
        peer.__exit__()
    assert password not in lst.log()


def test_pinned_certificate_written_by_the_module_is_accepted(tmp_path: Path, pki: Any, listener_factory: Any) -> None:
    lst = listener_factory(*restconf_args(pki)).start()
    done = play_enroll(tmp_path, {"device": DEVICE, "source": "certificate", "transport": "restconf",
                                  "value": Path(pki.device_cert.cert_path).read_text(),
                                  "listener": "unix:%s" % lst.status["control_socket"]})
    assert done["changed"] is True and not done.get("failed"), done
    peer = nginx(restconf_port(lst), pki)
    try:
        peer.start_dialing()
        rec = lst.wait_device(DEVICE, "connected", timeout=30)
        assert rec["transport"] == "restconf" and rec["fingerprint"] == done["fingerprint"]
        assert "event=device.unknown_key" not in lst.log()
    finally:
        peer.__exit__()
