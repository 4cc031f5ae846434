# SPDX-License-Identifier: GPL-3.0-or-later
"""A RESTCONF device nobody here wrote: Debian's nginx serving RESTCONF resources, calling home.

RESTCONF call home (RFC 8071 section 3.2) makes the *device* the TLS and HTTP server on the TCP
connection it opened to the listener. nginx cannot dial out, so the role reversal is socat's, as
for the OpenSSH peer (``sshd_peer.py``): ``socat TCP:<listener> TCP:127.0.0.1:<nginx>`` dials
the listener and bridges the socket to nginx's own loopback port. On the listener's side that is
an accepted socket on which it runs the TLS client and then HTTP, exactly as with a real device.

The nginx instance is our own: its prefix, configuration, pid file, logs and temp paths in a
work directory, ``daemon off``, one worker, a free loopback port; nothing of the system's nginx
(``/etc/nginx``) is read, and nothing else is started.

What it serves (static files under its root, media types set per location):

``/.well-known/host-meta``                      XRD with ``<Link rel='restconf' href='/restconf'/>``
``/restconf/yang-library-version``              ``{"ietf-restconf:yang-library-version": "2019-01-04"}``
``/restconf/data/ietf-yang-library:yang-library``  RFC 8525 JSON (a few modules)
``/restconf/data/ietf-interfaces:interfaces``   some data
``/restconf/data/...`` anything else            writable: PUT stores the body (nginx's DAV module,
                                                201 Created / 204 No Content), DELETE removes it
                                                (204), GET returns it; POST and PATCH see below

POST and PATCH (``restconf_config``'s other methods, POST its default) need a script: with
nginx's JavaScript module (Debian ``libnginx-mod-http-js``, njs; ``peer.njs`` says whether it is
loaded) ``restconf.js`` below answers them: POST creates the target resource (201 Created with
``Location``; 409 ``data-exists`` when it exists), PATCH merges a JSON object into it (RFC 7396
style, 204; 404 when absent), a body that is not JSON is 400 ``malformed-message``. Only POST
and PATCH are rewritten to the script's internal location; GET, HEAD, PUT and DELETE stay with
nginx's own static and DAV handlers. Without
the module, POST and PATCH get nginx's 405 Not Allowed (404 on a path with no data). Data is
JSON only (no XML bodies). A missing resource under ``/restconf/`` is answered as RFC 8040 section
7.1 says: 404 with an ``ietf-restconf:errors`` body (``NOT_FOUND``), not nginx's HTML page.

The access log is nginx's combined format plus ``conn=<serial> req=<n>`` (``$connection``,
``$connection_requests``): which connection served a request, so tests can tell that concurrent
tasks shared the one call-home connection.

TLS: the device's server certificate; ``ssl_verify_client on`` with the CA of the listener's
client certificate (a listener without a certificate from it gets HTTP 400 from nginx);
TLS 1.2 and 1.3. HTTP/2 on by default (ALPN ``h2``, ``http/1.1``); ``http2=False`` leaves only
HTTP/1.1. nginx 1.22 (Debian 12) spells HTTP/2 ``listen ... ssl http2``, 1.25.1 and later
(Debian 13 has 1.26) ``http2 on;``: chosen from ``nginx -v``. Optional HTTP basic
authentication (``basic_auth=(user, password)``) on ``/restconf/``.

Raises :class:`PeerUnavailable` with the reason when nginx or socat is missing (``make
system-deps`` installs both); tests turn that into a skip with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Tuple

if str(Path(__file__).resolve().parent) not in sys.path:  # a script that put only its own dir on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_availability import PeerUnavailable as _PeerUnavailable  # noqa: E402  (tests/peers)

NGINX_CANDIDATES = ("/usr/sbin/nginx", "nginx")
JS_MODULE = "ngx_http_js_module.so"
JS_PREFIX = "/.restconf-js"  # the internal location POST and PATCH are rewritten to
# POST and PATCH for /restconf/data/ (njs 0.7 on Debian 12, 0.8 on Debian 13), rewritten to the
# internal JS_PREFIX location; GET, HEAD, PUT and DELETE stay with nginx's static and DAV modules.
RESTCONF_JS = r"""
var fs = require('fs');
var PREFIX = '/.restconf-js';

function error(r, status, tag, message) {
    r.headersOut['Content-Type'] = 'application/yang-data+json';
    r.return(status, JSON.stringify({'ietf-restconf:errors': {'error': [
        {'error-type': 'protocol', 'error-tag': tag, 'error-message': message}]}}));
}

function exists(path) {
    try { fs.accessSync(path); return true; } catch (e) { return false; }
}

function merge(target, patch) {
    if (typeof target !== 'object' || target === null || Array.isArray(target) ||
        typeof patch !== 'object' || patch === null || Array.isArray(patch)) {
        return patch;
    }
    for (var key in patch) {
        target[key] = merge(target[key], patch[key]);
    }
    return target;
}

function write(r) {
    var uri = r.uri.substring(PREFIX.length);  // the /restconf/data/... path asked for
    var body;
    try {
        body = JSON.parse(r.requestText || '');
    } catch (e) {
        return error(r, 400, 'malformed-message', 'the body is not JSON');
    }
    var file = r.variables.document_root + uri;  // normalized by nginx: no dot segments
    if (r.method === 'POST') {
        if (exists(file)) {
            return error(r, 409, 'data-exists', 'the resource exists already');
        }
        fs.writeFileSync(file, JSON.stringify(body));
        r.headersOut['Location'] = uri;
        r.return(201);
        return;
    }
    if (!exists(file)) {
        return error(r, 404, 'invalid-value', 'no such resource');
    }
    var current;
    try {
        current = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
        current = {};
    }
    fs.writeFileSync(file, JSON.stringify(merge(current, body)));
    r.return(204);
}

export default {write};
"""
ERRORS_PREFIX = "/.restconf-errors"  # the internal location of the error documents
# RFC 8040 section 7.1: the error a missing data resource gets (its error-message is what a failed
# restconf_get shows)
NOT_FOUND = json.dumps({"ietf-restconf:errors": {"error": [
    {"error-type": "protocol", "error-tag": "invalid-value", "error-message": "uri path not found on this device"}]}})
HOST_META = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
    "  <Link rel='restconf' href='/restconf'/>\n"
    "</XRD>\n"
)
MODULES = (
    ("ietf-interfaces", "2018-02-20", "urn:ietf:params:xml:ns:yang:ietf-interfaces"),
    ("ietf-ip", "2018-02-22", "urn:ietf:params:xml:ns:yang:ietf-ip"),
    ("ietf-restconf", "2017-01-26", "urn:ietf:params:xml:ns:yang:ietf-restconf"),
    ("ietf-yang-library", "2019-01-04", "urn:ietf:params:xml:ns:yang:ietf-yang-library"),
)
INTERFACES = {
    "ietf-interfaces:interfaces": {
        "interface": [
            {"name": "eth0", "type": "iana-if-type:ethernetCsmacd", "enabled": True},
            {"name": "lo", "type": "iana-if-type:softwareLoopback", "enabled": True},
        ]
    }
}


class PeerUnavailable(_PeerUnavailable):
    """The nginx peer cannot run here (missing binaries); the message says why.

    A :class:`peer_availability.PeerUnavailable`: tests skip on it, or fail where peers are required."""


def nginx_binary() -> str:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise PeerUnavailable("nginx not found (Debian package nginx; make system-deps installs it)")


def nginx_version(binary: str) -> Tuple[int, ...]:
    """``nginx -v`` prints ``nginx version: nginx/1.22.1`` on stderr."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    if not found:
        raise PeerUnavailable("cannot read the nginx version from %r" % (out.stderr + out.stdout).strip())
    return tuple(int(part) for part in found.groups())


def js_module(binary: str) -> Optional[str]:
    """Path of nginx's JavaScript module (Debian libnginx-mod-http-js), None when not installed."""
    out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r"--modules-path=(\S+)", out.stderr + out.stdout)
    directory = Path(found.group(1)) if found else Path("/usr/lib/nginx/modules")
    path = directory / JS_MODULE
    return str(path) if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def yang_library_json() -> str:
    return json.dumps(
        {
            "ietf-yang-library:yang-library": {
                "content-id": "nginx-peer-1",
                "module-set": [
                    {
                        "name": "complete",
                        "module": [{"name": n, "revision": r, "namespace": ns} for n, r, ns in MODULES],
                    }
                ],
            }
        },
        indent=1,
    )


class NginxPeer:
    """Context manager: nginx as a RESTCONF device calling home to ``listener``.

    ``with NginxPeer(("127.0.0.1", port), server_cert=..., server_key=..., client_ca=...) as peer:``
    then :meth:`start_dialing` (or ``dial=True``); ``redial=True`` dials again after each drop.
    :meth:`error_log` and :meth:`access_log` for assertions and failure messages.
    """

    def __init__(
        self,
        listener: Tuple[str, int],
        *,
        server_cert: Path,
        server_key: Path,
        client_ca: Path,
        http2: bool = True,
        basic_auth: Optional[Tuple[str, str]] = None,
        dial: bool = False,
        redial: bool = False,
        retry: float = 0.5,
    ) -> None:
        self.listener = listener
        self.server_cert = Path(server_cert)
        self.server_key = Path(server_key)
        self.client_ca = Path(client_ca)
        self.http2 = http2
        self.basic_auth = basic_auth
        self.redial = redial
        self.retry = retry
        self._dial_on_enter = dial
        self.workdir: Optional[Path] = None
        self.port = 0
        self.version: Tuple[int, ...] = ()
        self.njs = False  # POST/PATCH answered by restconf.js (nginx's JavaScript module loaded)
        self.dials = 0
        self._nginx: Optional[subprocess.Popen[bytes]] = None
        self._socat: Optional[subprocess.Popen[bytes]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    # -- setup -------------------------------------------------------------------------------
    def __enter__(self) -> "NginxPeer":
        self.binary = nginx_binary()
        if shutil.which("socat") is None:
            raise PeerUnavailable("socat not found (Debian package socat; make system-deps installs it)")
        self.version = nginx_version(self.binary)
        self.js_module = js_module(self.binary)
        # Own temp dir under /tmp, not pytest's (0700 under /tmp/pytest-of-root): the worker
        # runs as nobody when the master is root and must reach the document root.
        self.workdir = Path(tempfile.mkdtemp(prefix="nginx-peer-"))
        try:
            self._setup()
            self._start()
        except BaseException:
            self.__exit__()
            raise
        if self._dial_on_enter:
            self.start_dialing()
        return self

    def _setup(self) -> None:
        wd = self.workdir
        assert wd is not None
        os.chmod(wd, 0o755)
        for sub in ("conf", "logs", "tmp", "html/.well-known", "html/restconf/data"):
            (wd / sub).mkdir(parents=True, exist_ok=True)
        tls = wd / "conf" / "tls"
        tls.mkdir(mode=0o700)
        # Read by the master (root or us) before the workers start: a private copy.
        for src, name in ((self.server_cert, "server.crt"), (self.server_key, "server.key"), (self.client_ca, "client-ca.crt")):
            shutil.copyfile(src, tls / name)
            os.chmod(tls / name, 0o600)
        html = wd / "html"
        (html / ".well-known" / "host-meta").write_text(HOST_META)
        (html / "restconf" / "yang-library-version").write_text(
            json.dumps({"ietf-restconf:yang-library-version": "2019-01-04"}) + "\n"
        )
        (html / "restconf" / "data" / "ietf-yang-library:yang-library").write_text(yang_library_json() + "\n")
        (html / "restconf" / "data" / "ietf-interfaces:interfaces").write_text(json.dumps(INTERFACES, indent=1) + "\n")
        user_line = ""
        if os.geteuid() == 0:
            # Workers as nobody: they write PUT bodies and temp files, so those dirs are theirs.
            user_line = "user nobody nogroup;"
            for path in (html / "restconf" / "data", wd / "tmp"):
                shutil.chown(path, user="nobody", group="nogroup")
            for path in (html / "restconf" / "data").iterdir():
                shutil.chown(path, user="nobody", group="nogroup")
        auth = ""
        if self.basic_auth is not None:
            user, password = self.basic_auth
            hashed = subprocess.run(
                ["openssl", "passwd", "-5", "-stdin"], input=password, capture_output=True, text=True, check=True,
                timeout=30,
            ).stdout.strip()
            (wd / "conf" / "htpasswd").write_text("%s:%s\n" % (user, hashed))
            os.chmod(wd / "conf" / "htpasswd", 0o644)
            auth = 'auth_basic "restconf"; auth_basic_user_file %s;' % (wd / "conf" / "htpasswd")
        load_js = js_location = ""
        data_location = """location /restconf/data/ {
                dav_methods PUT DELETE;
                create_full_put_path on;
                dav_access user:rw group:r all:r;
            }"""
        if self.js_module is not None:
            self.njs = True
            (wd / "conf" / "restconf.js").write_text(RESTCONF_JS)
            load_js = "load_module %s;" % self.js_module
            # POST and PATCH are rewritten (before any body is read, so the DAV module still
            # reads PUT bodies into its file) to an internal location the script serves.
            data_location = """location /restconf/data/ {
                if ($request_method ~ ^(POST|PATCH)$) {
                    rewrite ^ %s$uri last;
                }
                dav_methods PUT DELETE;
                create_full_put_path on;
                dav_access user:rw group:r all:r;
            }""" % JS_PREFIX
            js_location = """location ^~ %s/ {
            internal;
            %s
            # r.requestText needs the body in one memory buffer (limit: client_max_body_size)
            client_body_buffer_size 8m;
            client_body_in_single_buffer on;
            js_content restconf.write;
        }""" % (JS_PREFIX, auth)
        self.port = free_port()
        new_syntax = self.version >= (1, 25, 1)
        listen = "listen 127.0.0.1:%d ssl%s;" % (self.port, " http2" if self.http2 and not new_syntax else "")
        http2_line = "http2 %s;" % ("on" if self.http2 else "off") if new_syntax else ""
        self.config = wd / "conf" / "nginx.conf"
        self.config.write_text(
            f"""
{load_js}
daemon off;
worker_processes 1;
{user_line}
pid {wd}/logs/nginx.pid;
error_log {wd}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    # nginx's combined format plus the connection's serial number and its request count: tests
    # tell from it that concurrent tasks shared one call-home connection.
    log_format callhome '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                        '"$http_referer" "$http_user_agent" conn=$connection req=$connection_requests';
    access_log {wd}/logs/access.log callhome;
    client_body_temp_path {wd}/tmp/body;
    proxy_temp_path {wd}/tmp/proxy;
    fastcgi_temp_path {wd}/tmp/fastcgi;
    uwsgi_temp_path {wd}/tmp/uwsgi;
    scgi_temp_path {wd}/tmp/scgi;
    default_type application/octet-stream;
    server_tokens off;
    client_max_body_size 8m;
    # A call-home device keeps the connection it opened: nginx's defaults would end an idle one
    # after 75 s and any after 1000 requests (Connection: close / GOAWAY), which the listener
    # handles, but which is not how a device behaves.
    keepalive_timeout 1h;
    keepalive_requests 1000000;
    {"js_import restconf from %s;" % (wd / "conf" / "restconf.js") if self.njs else ""}
    server {{
        {listen}
        {http2_line}
        server_name _;
        # Location as the handler set it (a path, as RESTCONF servers answer a POST): nginx 1.26
        # otherwise makes it absolute with its own name and port, which 1.22 did not.
        absolute_redirect off;
        ssl_certificate {tls}/server.crt;
        ssl_certificate_key {tls}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {tls}/client-ca.crt;
        ssl_verify_client on;
        ssl_verify_depth 2;
        root {html};
        location = /.well-known/host-meta {{
            default_type application/xrd+xml;
        }}
        location /restconf/ {{
            {auth}
            default_type application/yang-data+json;
            # A missing resource is answered as a RESTCONF server does (RFC 8040 section 7.1):
            # status 404 with an ietf-restconf:errors body, not nginx's HTML page.
            error_page 404 = {ERRORS_PREFIX}/404;
            {data_location}
        }}
        location = {ERRORS_PREFIX}/404 {{
            internal;
            default_type application/yang-data+json;
            return 404 '{NOT_FOUND}';
        }}
        {js_location}
        location / {{
            return 404;
        }}
    }}
}}
"""
        )
        check = subprocess.run(
            self._command("-t"), capture_output=True, text=True, timeout=60, check=False
        )
        if check.returncode != 0:
            raise RuntimeError("nginx -t refused the peer's configuration:\n%s" % check.stderr)

    def _command(self, *extra: str) -> list[str]:
        assert self.workdir is not None
        # -p: our prefix; -e: the error log before the configuration is read (not /var/log).
        return [self.binary, "-p", str(self.workdir), "-e", str(self.workdir / "logs" / "error.log"),
                "-c", str(self.config), *extra]

    def _start(self) -> None:
        self._nginx = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            if self._nginx.poll() is not None:
                err = self._nginx.stderr.read().decode(errors="replace") if self._nginx.stderr else ""
                raise RuntimeError("nginx exited with %s: %s\n%s" % (self._nginx.returncode, err, self.error_log()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen on port %d within 20s:\n%s" % (self.port, self.error_log()))
                time.sleep(0.05)

    # -- calling home ----------------------------------------------------------------------
    def command(self) -> list[str]:
        """socat: dial the listener, then bridge that socket to nginx's loopback port."""
        host, port = self.listener
        return ["socat", f"TCP:{host}:{port}", f"TCP:127.0.0.1:{self.port}"]

    def start_dialing(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._dial_loop, name="nginx-peer", daemon=True)
        self._thread.start()

    def _dial_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._socat = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                self.dials += 1
            err = self._socat.communicate()[1]
            if err and self.workdir is not None and self.workdir.exists():
                with (self.workdir / "logs" / "socat.log").open("a") as fh:
                    fh.write(err.decode(errors="replace"))
            if not self.redial:
                return
            self._stop.wait(self.retry)

    def hang_up(self) -> None:
        """End the current call-home connection (socat goes; nginx stays)."""
        with self._lock:
            proc = self._socat
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    # -- logs ------------------------------------------------------------------------------
    def _log(self, name: str) -> str:
        if self.workdir is None:
            return ""
        path = self.workdir / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        return self._log("error.log")

    def access_log(self) -> str:
        return self._log("access.log")

    def stored(self, path: str) -> Optional[bytes]:
        """What nginx stored for a data path (``/restconf/data/...``), None when absent."""
        assert self.workdir is not None
        target = self.workdir / "html" / path.lstrip("/")
        return target.read_bytes() if target.is_file() else None

    # -- teardown --------------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.hang_up()
        if self._thread is not None:
            self._thread.join(10)
        if self._nginx is not None and self._nginx.poll() is None:
            self._nginx.terminate()  # SIGTERM: nginx's fast shutdown, the worker with it
            try:
                self._nginx.wait(15)
            except subprocess.TimeoutExpired:
                self._nginx.kill()
                self._nginx.wait()
        if self._nginx is not None and self._nginx.stderr is not None:
            self._nginx.stderr.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = ("NginxPeer", "PeerUnavailable", "nginx_binary", "nginx_version")
