/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * lnc2-device - a small NETCONF device (server) built on libnetconf2 2.0.x or 3.x that calls home
 * (RFC 8071) over SSH and/or TLS. It exists so that the netconf.callhome listener can be
 * tested against a NETCONF server implementation that nobody in this project wrote.
 *
 * Usage:
 *   lnc2-device --name NAME --yang-dir DIR [--yang-dir DIR ...] [--verbose]
 *       [--ssh-ch HOST:PORT --hostkey PRIVKEY_FILE [--hostkey ...] --user USER
 *        (--authorized-key PUBFILE [--authorized-key ...] | --password PW)]
 *       [--tls-ch HOST:PORT --tls-cert PEM --tls-key PEM --tls-ca CA_PEM [--tls-ca ...]
 *        --ctn-fingerprint FP [--ctn-user USER]]
 *       [--direct-ssh HOST:PORT] [--extra-channels accept|silent|refuse]
 *
 *   --name             device name; stored in /callhome-test-device:device/name of the
 *                      running datastore and used in call-home client names.
 *   --yang-dir         YANG search directory (repeatable). Must provide ietf-netconf,
 *                      ietf-inet-types, ietf-netconf-acm, ietf-netconf-monitoring, ietf-yang-types
 *                      (Debian ships none for libnetconf2; pyang's copies in its
 *                      share/yang/modules/ietf work). The directory of this source file
 *                      (callhome-test-device.yang) is always searched as well.
 *   --ssh-ch           call home over SSH to HOST:PORT (HOST may be "[::1]").
 *   --hostkey          SSH host key private key file (PEM or OpenSSH format; rsa, ecdsa or
 *                      ed25519; at most one key per algorithm is used by libssh).
 *   --user             the SSH username the listener must authenticate as.
 *   --authorized-key   OpenSSH public key line file accepted for --user (publickey auth).
 *   --password         password accepted for --user (password auth).
 *                      Both --authorized-key and --password may be given; then both methods work.
 *   --tls-ch           call home over TLS to HOST:PORT.
 *   --tls-cert/--tls-key  the device's TLS server certificate and private key (PEM).
 *   --tls-ca           PEM certificate(s) trusted to verify the listener's client certificate
 *                      (a CA, or the client certificate itself). Loaded via the
 *                      trusted-cert-list callback.
 *   --ctn-fingerprint  cert-to-name fingerprint of the client certificate (or of its CA):
 *                      SHA-256 as 64 hex digits, optionally colon separated, optionally
 *                      prefixed "04:" (RFC 7407 tls-fingerprint) or "SHA256:".
 *   --ctn-user         NETCONF username for a matching certificate (map type "specified");
 *                      without it the certificate's common name is used.
 *   --direct-ssh       also LISTEN on HOST:PORT for ordinary (non-call-home) NETCONF over SSH,
 *                      with the same --hostkey / --user / --authorized-key / --password.
 *                      --tls-cert/--tls-key/--tls-ca may be given without --tls-ch: then they
 *                      serve pushed TLS call-home configuration only.
 *   --extra-channels   what happens to a further SSH "session" channel with the "netconf"
 *                      subsystem on an established NETCONF over SSH session: accept (default)
 *                      = a second NETCONF session on it; silent = the channel and the subsystem
 *                      request are accepted but no NETCONF session ever starts there (no hello,
 *                      nothing read); refuse = SSH_MSG_CHANNEL_OPEN_FAILURE. See the libssh
 *                      interposers below for how (the same on both libnetconf2 generations).
 *   --verbose          forward libnetconf2 verbose messages too (default: warnings and errors).
 *
 * Behaviour: one call-home client per command-line transport ("NAME-ssh", "NAME-tls"),
 * connection type persistent, one endpoint each. libnetconf2 retries about once a second while the
 * listener is unreachable and reconnects at once when an established session ends.
 *
 * Datastores: running and candidate (:writable-running, :candidate, :confirmed-commit:1.1; the
 * ietf-netconf features are enabled so libnetconf2 advertises them and parses commit & co.).
 * Each datastore has two parts:
 *   - typed: callhome-test-device data, a libyang tree validated against that module;
 *   - stored: the ietf-netconf-server, ietf-keystore and ietf-truststore subtrees, kept as
 *     libyang *opaque* nodes (plain XML elements: name, namespace, value, children). The device
 *     does NOT load those modules (no copy of the IETF YANG texts is part of this repository), so
 *     libyang cannot validate them; the device runs its own checks instead (see check_stored()).
 * At start the stored part holds the keystore with the host keys as "hostkey0", "hostkey1", ...
 * (--hostkey order) and the TLS key as "tls-key" with certificate "tls-cert", and the truststore
 * with the --tls-ca certificates as bag "listener-ca" ("ca0", ...). Private keys are shown as
 * hidden-private-key.
 * Revision: the hello advertises ietf-netconf-server revision 2023-12-28 (the XML shape the
 * device understands) as a YANG 1.0 module capability set by hand, because the module is not in
 * the libyang context and therefore not in yang-library either.
 * RPCs: get (running + ietf-yang-library state) / get-config (running or candidate) with a
 * subtree filter applied to top-level nodes only; edit-config on running or candidate with
 * nc:operation merge / replace / create / delete / remove / none and default-operation (the
 * result is checked; running edits apply at once); commit, commit with confirmed /
 * confirm-timeout / persist, confirming commit (same session, or persist-id), cancel-commit,
 * rollback when the confirm-timeout passes or (without persist) the session ends;
 * discard-changes; lock / unlock / kill-session reply <ok/> (no real locking); close-session
 * and get-schema by libnetconf2; anything else operation-not-supported.
 *
 * Edits of the stored part (apply_stored_edit()): an element of the edit matches a stored
 * sibling with the same name and namespace and, if the edit element has a key child, the same
 * key value; the key child is "id" for cert-to-name entries and "name" for everything else (every
 * list the device reads is keyed by one of them). An element without children is a leaf: merge
 * replaces its value in place (so list keys stay first). A top-level container left empty is
 * dropped. YANG choices are not known: merging a different case (e.g. <periodic> into a client
 * that has <persistent/>) keeps both; use replace on the netconf-client entry for that (as
 * netconf.callhome.config does for state=replaced).
 * Checks of the stored part (check_stored(), after every edit-config and at commit; a failed
 * check is an invalid-value rpc-error and changes nothing): call-home has at least one
 * netconf-client; each netconf-client has a name and at least one endpoint; each endpoint has a
 * name, exactly one of ssh / tls and a remote-address; an SSH host key's
 * central-keystore-reference and the TLS server identity's keystore asymmetric-key name a key the
 * keystore has; a user's central-truststore-reference names a public-key bag the truststore has.
 * Anything else is stored as sent, unchecked.
 *
 * Applying running: whenever running changes, /netconf-server/call-home/netconf-client entries
 * become libnetconf2 call-home clients (endpoints ssh or tls, remote address and port (default
 * 4334 / 4335), TCP keepalives, persistent or periodic (period, idle-timeout), reconnect-strategy
 * start-with and max-attempts; max-wait and anchor-time are not supported by libnetconf2 2.0 and
 * ignored). SSH: host keys must be central-keystore-references to hostkeyN; users' public keys
 * (inline or a truststore public-key bag) become authorized keys (the command line's keys and
 * password keep working; configured password hashes are not supported). TLS: the server identity
 * must reference tls-key; the trusted certificates are the --tls-ca ones; cert-to-name entries
 * are applied. A removed entry's client is deleted and its sessions closed; a changed entry is
 * deleted and created again (under the libnetconf2 name "NAME#N").
 *
 * Every event is one line on stderr, prefixed "lnc2-device: ", e.g.
 *   lnc2-device: started name=dev1 pid=1234
 *   lnc2-device: ch-ssh connecting to 127.0.0.1:4334 (client dev1-ssh)   (once, at start)
 *   lnc2-device: direct-ssh listening on 127.0.0.1:8300
 *   lnc2-device: direct-ssh session 2 established user=netconf host=127.0.0.1 port=51234
 *   lnc2-device: running changed (edit-config|commit|confirmed commit|rollback)
 *   lnc2-device: edit refused: MESSAGE                                    (check_stored())
 *   lnc2-device: callhome client NAME added / removed
 *   lnc2-device: ch-ssh connecting to H:P (client NAME endpoint EP)     (pushed clients)
 *   lnc2-device: confirmed commit pending timeout=Ns persist=yes|no / confirmed
 *   lnc2-device: confirmed commit rolled back (timeout|cancel-commit|session closed)
 *   lnc2-device: ch-ssh session 3 closed reason=client-removed
 *   lnc2-device: ch-ssh connect attempt to 127.0.0.1:4334                (every TCP attempt)
 *   lnc2-device: ch-ssh tcp connected to 127.0.0.1:4334
 *   lnc2-device: ssh password auth for user=netconf accepted             (or rejected)
 *   lnc2-device: ch-ssh session 1 established on a new channel           (--extra-channels accept)
 *   lnc2-device: ch-ssh session 1 extra channel left silent              (--extra-channels silent)
 *   lnc2-device: ssh extra channel refused                               (--extra-channels refuse)
 *   lnc2-device: ch-ssh session 1 established client=dev1-ssh user=netconf host=127.0.0.1 port=4334
 *   lnc2-device: session 1 rpc get-config
 *   lnc2-device: ch-ssh session 1 closed reason=closed
 *   lnc2-device: stopping
 *   lnc2-device: stopped
 *   lnc2-device: libnetconf2 ERR: ...  /  libyang WRN: ...   (library messages)
 * The same with "ch-tls" for TLS. With --verbose, libnetconf2/libyang verbose messages too.
 * The command line and these lines are the same with libnetconf2 2.0 and 3.x. Differences of 3.x
 * (Debian 13 ships 3.7.1): the keystore, truststore, users and call-home clients are YANG data
 * applied with nc_server_config_setup_data() (pushed netconf-client entries are checked by
 * libnetconf2's own modules, see apply_config()); the device's context also holds ietf-ssh-server
 * (load_server_modules()); rpc-errors of the device's own checks carry no error-path.
 * SIGTERM / SIGINT stop the device cleanly (exit status 0).
 */
#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libyang/libyang.h>
#include <libyang/version.h>
#include <libssh/libssh.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

/* Debian's nc_server.h defines these itself; keep them for other builds. */
#ifndef NC_ENABLED_SSH
#define NC_ENABLED_SSH
#endif
#ifndef NC_ENABLED_TLS
#define NC_ENABLED_TLS
#endif
#include <nc_server.h>

/* Two generations of libnetconf2: 2.0.x (Debian 12) has no nc_version.h; 3.x (Debian 13 ships
 * 3.7.1, whose shared library is version 4: NC_VERSION_MAJOR 4) has it and is configured through
 * YANG data (server_config.h) instead of the 2.0 call-home/endpoint calls. */
#if defined(__has_include)
#if __has_include(<nc_version.h>)
#include <nc_version.h>
#endif
#endif
#if defined(NC_VERSION_MAJOR) && NC_VERSION_MAJOR >= 4
#define LNC2_V3 1
#define TI_SSH NC_TI_SSH
#define TI_TLS NC_TI_TLS
#else
#define LNC2_V3 0
#define TI_SSH NC_TI_LIBSSH
#define TI_TLS NC_TI_OPENSSL
#endif
/* libyang 3 (with libnetconf2 3.x) changed the log callback and lyd_new_any() */
#define LY_V3 (LY_VERSION_MAJOR >= 3)

#ifndef LNC2_DEVICE_YANG_DIR
#define LNC2_DEVICE_YANG_DIR "."
#endif

#define PROG "lnc2-device"
#define MAX_MULTI 8
#define TEST_MODULE "callhome-test-device"

/* ---------------------------------------------------------------- logging */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/** Print one event line to stderr (unbuffered, one write per line). */
static void
logline(const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    int n;

    n = snprintf(buf, sizeof buf, PROG ": ");
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2) {
        n = sizeof buf - 2;
    }
    buf[n++] = '\n';
    pthread_mutex_lock(&log_lock);
    (void)!write(STDERR_FILENO, buf, n);
    pthread_mutex_unlock(&log_lock);
}

/* set in main() before any libnetconf2 thread runs */
static int verbose_lib;
static uint16_t ssh_port_for_log, tls_port_for_log;

static const char *
label_for_port(unsigned port)
{
    if (port && port == ssh_port_for_log) {
        return "ch-ssh";
    }
    if (port && port == tls_port_for_log) {
        return "ch-tls";
    }
    return "ch";
}

/**
 * libnetconf2 messages. Errors and warnings are always shown; verbose ones only with --verbose,
 * except that each call-home TCP attempt is turned into an event line of our own (libnetconf2
 * 2.0 has no hook for connection attempts, so its verbose message is the only source).
 */
static __thread int channel_refused; /* this thread just refused an extra channel */

static void
lnc2_print_clb(NC_VERB_LEVEL level, const char *msg)
{
    static const char *names[] = {"ERR", "WRN", "VRB", "DBG", "DBL"};
    char host[256];
    unsigned port;

    if (sscanf(msg, "Trying to connect via IPv%*c to %255[^ ]", host) == 1) {
        char *colon = strrchr(host, ':');

        if (colon && sscanf(colon + 1, "%u", &port) == 1) {
            *colon = '\0';
            logline("%s connect attempt to %s:%u", label_for_port(port), host, port);
        }
    } else if (sscanf(msg, "Successfully connected to %255[^ ]", host) == 1) {
        char *colon = strrchr(host, ':');

        if (colon && sscanf(colon + 1, "%u", &port) == 1) {
            *colon = '\0';
            logline("%s tcp connected to %s:%u", label_for_port(port), host, port);
        }
    }
    if (channel_refused && strstr(msg, "failed to create a new SSH channel")) {
        /* libnetconf2's complaint about the channel the device refused on purpose */
        channel_refused = 0;
        return;
    }
    if (level <= NC_VERB_WARNING || verbose_lib) {
        logline("libnetconf2 %s: %s", names[level <= 4 ? level : 4], msg);
    }
}

#if LNC2_V3
static void
lnc2_print_clb3(const struct nc_session *session, NC_VERB_LEVEL level, const char *msg)
{
    (void)session;
    lnc2_print_clb(level, msg);
}
#endif

static void
ly_print_clb(LY_LOG_LEVEL level, const char *msg, const char *path)
{
    static const char *names[] = {"ERR", "WRN", "VRB", "DBG"};

    logline("libyang %s: %s%s%s", names[level <= 3 ? level : 3], msg, path ? " path=" : "", path ? path : "");
}

#if LY_V3
static void
ly_print_clb3(LY_LOG_LEVEL level, const char *msg, const char *data_path, const char *schema_path, uint64_t line)
{
    (void)line;
    ly_print_clb(level, msg, data_path ? data_path : schema_path);
}
#endif

/* ---------------------------------------------------------------- options */

struct endpoint {
    char *host;
    uint16_t port;
};

static struct {
    const char *name;
    const char *yang_dirs[MAX_MULTI];
    int yang_dir_count;
    int verbose;

    struct endpoint ssh;
    const char *hostkeys[MAX_MULTI];
    int hostkey_count;
    const char *user;
    const char *authkeys[MAX_MULTI];
    int authkey_count;
    const char *password;

    struct endpoint tls;
    const char *tls_cert;
    const char *tls_key;
    const char *tls_cas[MAX_MULTI];
    int tls_ca_count;
    char *ctn_fingerprint;
    const char *ctn_user;

    struct endpoint direct;
    int extra_channels; /* EXTRA_* */
} opts;

/* --extra-channels: what the device does with a second (third, ...) SSH channel of an established
 * NETCONF over SSH session (call home or direct) */
enum { EXTRA_ACCEPT, EXTRA_SILENT, EXTRA_REFUSE };

static volatile sig_atomic_t stop_requested;


static void
die(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    logline("error: %s", buf);
    exit(2);
}

/** Parse HOST:PORT or [V6HOST]:PORT. */
static void
parse_endpoint(const char *arg, struct endpoint *ep)
{
    const char *colon = strrchr(arg, ':');
    char *end;
    long port;
    size_t hlen;

    if (!colon || colon == arg) {
        die("bad endpoint '%s', expected HOST:PORT", arg);
    }
    port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535) {
        die("bad port in '%s'", arg);
    }
    hlen = colon - arg;
    if (arg[0] == '[' && arg[hlen - 1] == ']') {
        ep->host = strndup(arg + 1, hlen - 2);
    } else {
        ep->host = strndup(arg, hlen);
    }
    ep->port = (uint16_t)port;
}

/** Turn a SHA-256 fingerprint in any common spelling into libnetconf2's "04:aa:bb:..." form. */
static char *
normalize_fingerprint(const char *fp)
{
    char hex[129];
    size_t n = 0;
    char *out, *p;
    size_t i;

    if (!strncasecmp(fp, "SHA256:", 7)) {
        fp += 7;
    } else if (!strncmp(fp, "04:", 3) && strlen(fp) == 3 + 32 * 3 - 1) {
        fp += 3;
    }
    for (; *fp; fp++) {
        if (*fp == ':') {
            continue;
        }
        if (!strchr("0123456789abcdefABCDEF", *fp) || n >= 128) {
            die("bad --ctn-fingerprint, expected SHA-256 hex digits");
        }
        hex[n++] = *fp;
    }
    if (n != 64) {
        die("bad --ctn-fingerprint, expected 32 bytes (SHA-256), got %zu hex digits", n);
    }
    out = p = malloc(3 + 32 * 3);
    p += sprintf(p, "04");
    for (i = 0; i < n; i += 2) {
        p += sprintf(p, ":%c%c", hex[i], hex[i + 1]);
    }
    return out;
}

static void
usage(void)
{
    fprintf(stderr,
            "usage: " PROG " --name NAME --yang-dir DIR [--verbose]\n"
            "  [--ssh-ch HOST:PORT --hostkey KEY --user USER (--authorized-key PUB | --password PW)]\n"
            "  [--tls-ch HOST:PORT --tls-cert PEM --tls-key PEM --tls-ca PEM --ctn-fingerprint FP"
            " [--ctn-user USER]]\n"
            "  [--direct-ssh HOST:PORT] [--extra-channels accept|silent|refuse]\n");
    exit(2);
}

static void
add_multi(const char **arr, int *count, const char *val, const char *what)
{
    if (*count >= MAX_MULTI) {
        die("too many %s options", what);
    }
    arr[(*count)++] = val;
}

static void
parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"name", required_argument, NULL, 'n'},
        {"yang-dir", required_argument, NULL, 'y'},
        {"verbose", no_argument, NULL, 'v'},
        {"ssh-ch", required_argument, NULL, 's'},
        {"hostkey", required_argument, NULL, 'k'},
        {"user", required_argument, NULL, 'u'},
        {"authorized-key", required_argument, NULL, 'a'},
        {"password", required_argument, NULL, 'p'},
        {"tls-ch", required_argument, NULL, 't'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'K'},
        {"tls-ca", required_argument, NULL, 'C'},
        {"ctn-fingerprint", required_argument, NULL, 'f'},
        {"ctn-user", required_argument, NULL, 'U'},
        {"direct-ssh", required_argument, NULL, 'D'},
        {"extra-channels", required_argument, NULL, 'E'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': opts.name = optarg; break;
        case 'y': add_multi(opts.yang_dirs, &opts.yang_dir_count, optarg, "--yang-dir"); break;
        case 'v': opts.verbose = 1; break;
        case 's': parse_endpoint(optarg, &opts.ssh); break;
        case 'k': add_multi(opts.hostkeys, &opts.hostkey_count, optarg, "--hostkey"); break;
        case 'u': opts.user = optarg; break;
        case 'a': add_multi(opts.authkeys, &opts.authkey_count, optarg, "--authorized-key"); break;
        case 'p': opts.password = optarg; break;
        case 't': parse_endpoint(optarg, &opts.tls); break;
        case 'c': opts.tls_cert = optarg; break;
        case 'K': opts.tls_key = optarg; break;
        case 'C': add_multi(opts.tls_cas, &opts.tls_ca_count, optarg, "--tls-ca"); break;
        case 'f': opts.ctn_fingerprint = normalize_fingerprint(optarg); break;
        case 'U': opts.ctn_user = optarg; break;
        case 'D': parse_endpoint(optarg, &opts.direct); break;
        case 'E':
            if (!strcmp(optarg, "accept")) {
                opts.extra_channels = EXTRA_ACCEPT;
            } else if (!strcmp(optarg, "silent")) {
                opts.extra_channels = EXTRA_SILENT;
            } else if (!strcmp(optarg, "refuse")) {
                opts.extra_channels = EXTRA_REFUSE;
            } else {
                die("bad --extra-channels '%s', expected accept, silent or refuse", optarg);
            }
            break;
        default: usage();
        }
    }
    if (optind != argc || !opts.name) {
        usage();
    }
    if (!opts.ssh.host && !opts.tls.host && !opts.direct.host) {
        die("nothing to do: give --ssh-ch, --tls-ch and/or --direct-ssh");
    }
    if (opts.ssh.host || opts.direct.host) {
        if (!opts.hostkey_count || !opts.user || (!opts.authkey_count && !opts.password)) {
            die("--ssh-ch and --direct-ssh need --hostkey, --user and --authorized-key and/or --password");
        }
    }
    if (opts.tls.host) {
        if (!opts.tls_cert || !opts.tls_key || !opts.tls_ca_count || !opts.ctn_fingerprint) {
            die("--tls-ch needs --tls-cert, --tls-key, --tls-ca and --ctn-fingerprint");
        }
    }
}

/* ---------------------------------------------------------------- libssh interposers */

/*
 * Two libssh functions that libnetconf2 calls are defined here as well. The dynamic linker binds
 * libnetconf2's calls to these definitions (the executable comes first in the lookup order, and ld
 * exports them because libnetconf2.so, on the link line, refers to them); each one calls libssh's
 * own function (dlsym RTLD_NEXT). Both generations of libnetconf2 accept every further SSH channel
 * and its "netconf" subsystem request themselves, with no hook for the application, and 3.x checks
 * passwords itself with no callback; these two wrappers are where the device gets a say.
 */

/* set around nc_ps_poll() in the main thread: SSH messages handled there belong to established
 * sessions, so a channel-open request met there is an extra channel (the first channel of a
 * session is opened in a call-home thread or in nc_accept(), outside this flag) */
static __thread int in_ps_poll;

/**
 * --extra-channels refuse: an extra channel's open request gets no channel. libnetconf2 then
 * answers the request with libssh's default reply, SSH_MSG_CHANNEL_OPEN_FAILURE (2.0: its message
 * callback returns 1 and libssh replies; 3.x: nc_session_ssh_msg() calls ssh_message_reply_default()
 * when nc_server_ssh_channel_open() fails).
 */
ssh_channel
ssh_message_channel_request_open_reply_accept(ssh_message msg)
{
    static ssh_channel (*real)(ssh_message);

    if (in_ps_poll && opts.extra_channels == EXTRA_REFUSE) {
        logline("ssh extra channel refused");
        channel_refused = 1;
        return NULL;
    }
    if (!real) {
        *(void **)&real = dlsym(RTLD_NEXT, "ssh_message_channel_request_open_reply_accept");
    }
    return real(msg);
}

#if LNC2_V3
/**
 * libnetconf2 3.x checks a password against the crypt hash in its configuration (the command
 * line's --password, hashed by nc_server_config_add_ch_ssh_user_password()); it has no password
 * callback (nc_server_ssh_set_passwd_auth_clb() of 2.0 is gone) and does not log a failed
 * attempt with the user name. It reads the password with this function, so the device logs the
 * same event as 2.0's callback here, with the same verdict (the same password, compared in clear).
 */
const char *
ssh_message_auth_password(ssh_message msg)
{
    static const char *(*real)(ssh_message);
    const char *password, *user;
    int ok;

    if (!real) {
        *(void **)&real = dlsym(RTLD_NEXT, "ssh_message_auth_password");
    }
    password = real(msg);
    user = ssh_message_auth_user(msg);
    ok = opts.password && user && password && opts.user && !strcmp(user, opts.user) &&
            !strcmp(password, opts.password);
    logline("ssh password auth for user=%s %s", user ? user : "?", ok ? "accepted" : "rejected");
    return password;
}
#endif

/* ---------------------------------------------------------------- callbacks */

#if !LNC2_V3
/* libnetconf2 2.0 asks for keys and passwords through callbacks; 3.x reads them from its
 * configuration (keystore, truststore, users), see build_base_config(). */

/** Host keys are named by their index in opts.hostkeys ("hostkey0", ...). */
static int
hostkey_clb(const char *name, void *user_data, char **privkey_path, char **privkey_data,
        NC_SSH_KEY_TYPE *privkey_type)
{
    int idx;

    (void)user_data;
    (void)privkey_data;
    (void)privkey_type;
    if (sscanf(name, "hostkey%d", &idx) != 1 || idx < 0 || idx >= opts.hostkey_count) {
        logline("unknown host key '%s' requested", name);
        return 1;
    }
    *privkey_path = strdup(opts.hostkeys[idx]);
    return 0;
}

static int
passwd_clb(const struct nc_session *session, const char *password, void *user_data)
{
    const char *user = nc_session_get_username(session);
    int ok;

    (void)user_data;
    ok = opts.password && user && !strcmp(user, opts.user) && !strcmp(password, opts.password);
    logline("ssh password auth for user=%s %s", user ? user : "?", ok ? "accepted" : "rejected");
    return ok ? 0 : 1;
}

static int
server_cert_clb(const char *name, void *user_data, char **cert_path, char **cert_data,
        char **privkey_path, char **privkey_data, NC_SSH_KEY_TYPE *privkey_type)
{
    (void)name;
    (void)user_data;
    (void)cert_data;
    (void)privkey_data;
    (void)privkey_type;
    *cert_path = strdup(opts.tls_cert);
    *privkey_path = strdup(opts.tls_key);
    return 0;
}

static int
trusted_cert_list_clb(const char *name, void *user_data, char ***cert_paths, int *cert_path_count,
        char ***cert_data, int *cert_data_count)
{
    int i;

    (void)name;
    (void)user_data;
    *cert_data = NULL;
    *cert_data_count = 0;
    *cert_paths = calloc(opts.tls_ca_count, sizeof **cert_paths);
    for (i = 0; i < opts.tls_ca_count; i++) {
        (*cert_paths)[i] = strdup(opts.tls_cas[i]);
    }
    *cert_path_count = opts.tls_ca_count;
    return 0;
}

#endif /* !LNC2_V3 */

/* ---------------------------------------------------------------- datastore */

#define NC_NS "urn:ietf:params:xml:ns:netconf:base:1.0"
#define NCS_NS "urn:ietf:params:xml:ns:yang:ietf-netconf-server"
#define KS_NS "urn:ietf:params:xml:ns:yang:ietf-keystore"
#define TS_NS "urn:ietf:params:xml:ns:yang:ietf-truststore"
#define CT_NS "urn:ietf:params:xml:ns:yang:ietf-crypto-types"
/* The device does not load ietf-netconf-server (see the top comment), so libnetconf2 cannot derive
 * this capability from the context: the device says itself which revision's XML it understands.
 * YANG 1.0 module capability form (RFC 6020 section 5.6.4), the form revision.py reads. The "&"
 * is NOT escaped here: libnetconf2 2.0 builds the hello as a data tree and its XML printer turns
 * it into "&amp;" on the wire (tests/integration/test_lnc2_selfcheck.py checks the raw hello). */
#define NCS_CAPABILITY NCS_NS "?module=ietf-netconf-server&revision=2023-12-28"
#define MAX_PUSHED 32
#define MAX_CH_SESSIONS 64

/* Only the poll thread (main) touches these after start-up (RPC callbacks run in it too). */
static struct ly_ctx *ctx;

/** One datastore: the libyang-validated callhome-test-device tree and the stored (opaque)
 * ietf-netconf-server / keystore / truststore subtrees, see the top comment. */
struct store {
    struct lyd_node *typed;
    struct lyd_node *opaq;
};
static struct store running;
static struct store candidate; /* always separate trees; equal to running unless dirty */
static int candidate_dirty;
static struct nc_pollsession *ps;
static char authkey_dir[] = "/tmp/lnc2-device-XXXXXX";
static int authkey_dir_made;

/* a pending confirmed commit (RFC 6241 section 8.4) */
static struct {
    int active;
    struct store backup;      /* running before the first confirmed commit */
    struct timespec deadline; /* CLOCK_MONOTONIC */
    char *persist;            /* persist token, or NULL: then bound to session `sid` */
    uint32_t sid;
} pending;

/* call-home clients created from the running configuration */
static struct pushed_client {
    char *name;    /* list key in the configuration */
    char *lnc_name; /* libnetconf2 client name: name, or name#GEN after an update */
    char *sig;     /* the entry printed as XML; a different print means "changed" */
    char *authkeys[MAX_MULTI * 2]; /* files registered with nc_server_ssh_add_authkey_path */
    int authkey_count;
} pushed[MAX_PUSHED];
static int pushed_count;
#if !LNC2_V3
static unsigned generation;
#endif

/* established call-home sessions and their libnetconf2 client (added by call-home threads) */
static pthread_mutex_t chs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    struct nc_session *session;
    char client[160];
    int close; /* set by reconcile: the poll thread closes it after the current RPC */
} chs[MAX_CH_SESSIONS];

/* libnetconf2 client names that were removed (chs_lock): never reused, because the old
 * call-home thread may still be finishing; sessions a removed client establishes are dropped */
static char *removed_names[256];
static int removed_count;

static int
was_removed(const char *lnc_name)
{
    int i, found = 0;

    pthread_mutex_lock(&chs_lock);
    for (i = 0; i < removed_count && !found; i++) {
        found = !strcmp(removed_names[i], lnc_name);
    }
    pthread_mutex_unlock(&chs_lock);
    return found;
}

static const char *
transport_label(const struct nc_session *session)
{
    if (!nc_session_is_callhome(session)) {
        return "direct-ssh";
    }
    switch (nc_session_get_ti(session)) {
    case TI_SSH: return "ch-ssh";
    case TI_TLS: return "ch-tls";
    default: return "session";
    }
}

static struct nc_server_reply *
reply_error(NC_ERR tag, NC_ERR_TYPE type, const char *msg)
{
    struct lyd_node *err = nc_err(ctx, tag, type);

    if (msg) {
        nc_err_set_msg(err, msg, "en");
    }
    return nc_server_reply_err(err);
}

/** An invalid-value / data-missing / ... error carrying libyang's message and path. */
static struct nc_server_reply *
reply_ly_error(NC_ERR tag, const char *fallback)
{
    struct lyd_node *err = nc_err(ctx, tag, NC_ERR_TYPE_APP);
    const char *path = ly_errpath(ctx);

    nc_err_set_msg(err, ly_errmsg(ctx) ? ly_errmsg(ctx) : fallback, "en");
    if (path) {
        nc_err_set_path(err, path);
    }
    return nc_server_reply_err(err);
}

static int
timespec_passed(const struct timespec *t)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

static char *
b64(const unsigned char *data, int len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);

    EVP_EncodeBlock((unsigned char *)out, data, len);
    return out;
}

/* ------------------------------------------------ the stored (opaque) subtrees */

/** Name and namespace of a data node, typed or opaque. */
static const char *
node_name(const struct lyd_node *n)
{
    return n->schema ? n->schema->name : ((const struct lyd_node_opaq *)n)->name.name;
}

static const char *
node_ns(const struct lyd_node *n)
{
    return n->schema ? n->schema->module->ns : ((const struct lyd_node_opaq *)n)->name.module_ns;
}

static int
is_stored_ns(const char *ns)
{
    return ns && (!strcmp(ns, NCS_NS) || !strcmp(ns, KS_NS) || !strcmp(ns, TS_NS));
}

/** The first child of `n` named `name` (the stored part has one namespace per subtree). */
static struct lyd_node *
ochild(const struct lyd_node *n, const char *name)
{
    struct lyd_node *c;

    LY_LIST_FOR(n ? lyd_child(n) : NULL, c) {
        if (!strcmp(node_name(c), name)) {
            return c;
        }
    }
    return NULL;
}

/** The descendant at "a/b/c" (first match at each step), or NULL. */
static struct lyd_node *
opath(const struct lyd_node *n, const char *path)
{
    char buf[256], *tok, *save = NULL;
    struct lyd_node *cur = (struct lyd_node *)n;

    snprintf(buf, sizeof buf, "%s", path);
    for (tok = strtok_r(buf, "/", &save); tok && cur; tok = strtok_r(NULL, "/", &save)) {
        cur = ochild(cur, tok);
    }
    return cur;
}

/** The text of the leaf at `path` below `n` (NULL path: `n` itself); NULL if missing or not a leaf. */
static const char *
oval(const struct lyd_node *n, const char *path)
{
    const struct lyd_node *leaf = path ? opath(n, path) : n;

    if (!leaf || lyd_child(leaf)) {
        return NULL;
    }
    return leaf->schema ? lyd_get_value(leaf) : ((const struct lyd_node_opaq *)leaf)->value;
}

/** The next sibling from `from` on named `name`. */
static struct lyd_node *
onext(struct lyd_node *from, const char *name)
{
    for (; from; from = from->next) {
        if (!strcmp(node_name(from), name)) {
            return from;
        }
    }
    return NULL;
}

#define OFOR_EACH(parent, name, var) \
    for ((var) = onext((parent) ? lyd_child(parent) : NULL, (name)); (var); (var) = onext((var)->next, (name)))

/** The top-level stored node `name` in namespace `ns`. */
static struct lyd_node *
otop(const struct lyd_node *tree, const char *ns, const char *name)
{
    const struct lyd_node *n;

    LY_LIST_FOR(tree, n) {
        if (!strcmp(node_name(n), name) && node_ns(n) && !strcmp(node_ns(n), ns)) {
            return (struct lyd_node *)n;
        }
    }
    return NULL;
}

/** Whether the keystore of `tree` has asymmetric key `name`. */
static int
keystore_has(const struct lyd_node *tree, const char *name)
{
    struct lyd_node *keys = opath(otop(tree, KS_NS, "keystore"), "asymmetric-keys"), *k;

    OFOR_EACH(keys, "asymmetric-key", k) {
        if (oval(k, "name") && !strcmp(oval(k, "name"), name)) {
            return 1;
        }
    }
    return 0;
}

/** The truststore public-key bag `name` of `tree`, or NULL. */
static struct lyd_node *
truststore_public_key_bag(const struct lyd_node *tree, const char *name)
{
    struct lyd_node *bags = opath(otop(tree, TS_NS, "truststore"), "public-key-bags"), *b;

    OFOR_EACH(bags, "public-key-bag", b) {
        if (oval(b, "name") && !strcmp(oval(b, "name"), name)) {
            return b;
        }
    }
    return NULL;
}

/* ------------------------------------------------ keystore / truststore content */

/** The device's own credentials as ietf-keystore / ietf-truststore XML (stored part), so that
 * pushed call-home configuration can reference them. SSH host keys are "hostkey0", "hostkey1",
 * ... (the --hostkey order); the TLS key is "tls-key" with certificate "tls-cert"; the --tls-ca
 * certificates form the certificate bag "listener-ca" (certificates "ca0", "ca1", ...). Private
 * keys are "hidden". */
static struct lyd_node *
make_keystore(void)
{
    struct lyd_node *tree = NULL;
    char *xml = NULL, *pub;
    size_t xml_len = 0;
    FILE *out = open_memstream(&xml, &xml_len);
    ssh_key key = NULL, pubkey = NULL;
    int i;

    fprintf(out, "<keystore xmlns=\"%s\" xmlns:ct=\"%s\"><asymmetric-keys>", KS_NS, CT_NS);
    for (i = 0; i < opts.hostkey_count; i++) {
        if (ssh_pki_import_privkey_file(opts.hostkeys[i], NULL, NULL, NULL, &key) != SSH_OK ||
                ssh_pki_export_privkey_to_pubkey(key, &pubkey) != SSH_OK ||
                ssh_pki_export_pubkey_base64(pubkey, &pub) != SSH_OK) {
            die("cannot read host key %s", opts.hostkeys[i]);
        }
        fprintf(out, "<asymmetric-key><name>hostkey%d</name><public-key-format>ct:ssh-public-key-format"
                "</public-key-format><public-key>%s</public-key><hidden-private-key/></asymmetric-key>", i, pub);
        ssh_string_free_char(pub);
        ssh_key_free(pubkey);
        ssh_key_free(key);
    }
    if (opts.tls_cert) {
        FILE *f = fopen(opts.tls_cert, "r");
        X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        unsigned char *der = NULL;
        int len;
        char *data;

        if (f) {
            fclose(f);
        }
        if (!cert) {
            die("cannot read --tls-cert %s", opts.tls_cert);
        }
        len = i2d_PUBKEY(X509_get0_pubkey(cert), &der);
        data = b64(der, len);
        OPENSSL_free(der);
        der = NULL;
        fprintf(out, "<asymmetric-key><name>tls-key</name><public-key-format>ct:subject-public-key-info-format"
                "</public-key-format><public-key>%s</public-key><hidden-private-key/>", data);
        free(data);
        len = i2d_X509(cert, &der);
        data = b64(der, len);
        OPENSSL_free(der);
        fprintf(out, "<certificates><certificate><name>tls-cert</name><cert-data>%s</cert-data></certificate>"
                "</certificates></asymmetric-key>", data);
        free(data);
        X509_free(cert);
    }
    fprintf(out, "</asymmetric-keys></keystore>");
    if (opts.tls_ca_count) {
        fprintf(out, "<truststore xmlns=\"%s\"><certificate-bags><certificate-bag><name>listener-ca</name>", TS_NS);
    }
    for (i = 0; i < opts.tls_ca_count; i++) {
        FILE *f = fopen(opts.tls_cas[i], "r");
        X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        unsigned char *der = NULL;
        int len;
        char *data;

        if (f) {
            fclose(f);
        }
        if (!cert) {
            die("cannot read --tls-ca %s", opts.tls_cas[i]);
        }
        len = i2d_X509(cert, &der);
        data = b64(der, len);
        OPENSSL_free(der);
        fprintf(out, "<certificate><name>ca%d</name><cert-data>%s</cert-data></certificate>", i, data);
        free(data);
        X509_free(cert);
    }
    if (opts.tls_ca_count) {
        fprintf(out, "</certificate-bag></certificate-bags></truststore>");
    }
    fclose(out);
    if (lyd_parse_data_mem(ctx, xml, LYD_XML, LYD_PARSE_ONLY | LYD_PARSE_OPAQ | LYD_PARSE_NO_STATE, 0, &tree)) {
        die("cannot build the keystore");
    }
    free(xml);
    return tree;
}

/* ------------------------------------------------ applying the configuration */

static void
mark_sessions_for_close(const char *lnc_name)
{
    int i;

    pthread_mutex_lock(&chs_lock);
    for (i = 0; i < MAX_CH_SESSIONS; i++) {
        if (chs[i].session && !strcmp(chs[i].client, lnc_name)) {
            chs[i].close = 1;
        }
    }
    pthread_mutex_unlock(&chs_lock);
}

static void
forget_session(struct nc_session *session)
{
    int i;

    pthread_mutex_lock(&chs_lock);
    for (i = 0; i < MAX_CH_SESSIONS; i++) {
        if (chs[i].session == session) {
            chs[i].session = NULL;
        }
    }
    pthread_mutex_unlock(&chs_lock);
}

/** Poll thread, between RPCs: close the sessions of removed call-home clients. */
static void
close_marked_sessions(void)
{
    struct nc_session *victims[MAX_CH_SESSIONS];
    int i, n = 0;

    pthread_mutex_lock(&chs_lock);
    for (i = 0; i < MAX_CH_SESSIONS; i++) {
        if (chs[i].session && chs[i].close) {
            victims[n++] = chs[i].session;
            chs[i].session = NULL;
        }
    }
    pthread_mutex_unlock(&chs_lock);
    for (i = 0; i < n; i++) {
        logline("%s session %u closed reason=client-removed", transport_label(victims[i]), nc_session_get_id(victims[i]));
        nc_ps_del_session(ps, victims[i]);
        nc_session_free(victims[i], NULL);
    }
}

#if !LNC2_V3
static void
remove_pushed(int idx)
{
    struct pushed_client *pc = &pushed[idx];
    int i;

    pthread_mutex_lock(&chs_lock);
    if (removed_count < 256) {
        removed_names[removed_count++] = strdup(pc->lnc_name);
    }
    pthread_mutex_unlock(&chs_lock);
    nc_server_ch_del_client(pc->lnc_name);
    mark_sessions_for_close(pc->lnc_name);
    for (i = 0; i < pc->authkey_count; i++) {
        nc_server_ssh_del_authkey(pc->authkeys[i], NULL, 0, NULL);
        unlink(pc->authkeys[i]);
        free(pc->authkeys[i]);
    }
    logline("callhome client %s removed", pc->name);
    free(pc->name);
    free(pc->lnc_name);
    free(pc->sig);
    pushed[idx] = pushed[--pushed_count];
    memset(&pushed[pushed_count], 0, sizeof pushed[pushed_count]);
}

#endif /* !LNC2_V3 */

static const char *
leaf_value(const struct lyd_node *parent, const char *path)
{
    struct lyd_node *node = NULL;

    if (lyd_find_path(parent, path, 0, &node) || !node) {
        return NULL;
    }
    return lyd_get_value(node);
}

#if !LNC2_V3

/** SSH wire-format public key (base64) -> "TYPE BASE64" line in a file of our own. */
static char *
write_authkey(const char *base64)
{
    static unsigned counter;
    unsigned char raw[8192];
    char type[64], *path;
    uint32_t tlen;
    int len;
    FILE *f;

    len = EVP_DecodeBlock(raw, (const unsigned char *)base64, strlen(base64));
    if (len < 5) {
        return NULL;
    }
    tlen = ((uint32_t)raw[0] << 24) | ((uint32_t)raw[1] << 16) | ((uint32_t)raw[2] << 8) | raw[3];
    if (tlen == 0 || tlen >= sizeof type || (int)tlen > len - 4) {
        return NULL;
    }
    memcpy(type, raw + 4, tlen);
    type[tlen] = '\0';
    if (!authkey_dir_made) {
        if (!mkdtemp(authkey_dir)) {
            return NULL;
        }
        authkey_dir_made = 1;
    }
    if (asprintf(&path, "%s/key%u.pub", authkey_dir, counter++) < 0) {
        return NULL;
    }
    f = fopen(path, "w");
    if (!f) {
        free(path);
        return NULL;
    }
    fprintf(f, "%s %s\n", type, base64);
    fclose(f);
    return path;
}

static int
ssh_endpoint(struct pushed_client *pc, const char *ep, struct lyd_node *ssh)
{
    struct lyd_node *hk, *user, *keys, *key;
    const char *ref, *uname, *bag;
    char keyname[32];
    int methods = 0, idx;

    /* host keys: only references into the keystore (our keys are hostkey0, hostkey1, ...) */
    OFOR_EACH(opath(ssh, "ssh-server-parameters/server-identity"), "host-key", hk) {
        ref = oval(hk, "public-key/central-keystore-reference");
        if (!ref || sscanf(ref, "hostkey%d", &idx) != 1 || idx < 0 || idx >= opts.hostkey_count) {
            logline("callhome client %s endpoint %s: host key %s is not a keystore reference to a host key, skipped",
                    pc->name, ep, oval(hk, "name"));
            continue;
        }
        snprintf(keyname, sizeof keyname, "hostkey%d", idx);
        if (nc_server_ssh_ch_client_endpt_add_hostkey(pc->lnc_name, ep, keyname, -1)) {
            return -1;
        }
    }
    /* users: inline public keys (or a truststore public-key bag) become authorized keys */
    OFOR_EACH(opath(ssh, "ssh-server-parameters/client-authentication/users"), "user", user) {
        uname = oval(user, "name");
        bag = oval(user, "public-keys/central-truststore-reference");
        keys = bag ? truststore_public_key_bag(running.opaq, bag) : opath(user, "public-keys/inline-definition");
        OFOR_EACH(keys, "public-key", key) {
            const char *data = oval(key, "public-key");
            char *file = data ? write_authkey(data) : NULL;

            if (!file || pc->authkey_count >= MAX_MULTI * 2 || nc_server_ssh_add_authkey_path(file, uname)) {
                logline("callhome client %s: cannot use public key %s of user %s", pc->name, oval(key, "name"), uname);
                free(file);
                continue;
            }
            pc->authkeys[pc->authkey_count++] = file;
            methods |= NC_SSH_AUTH_PUBLICKEY;
        }
        if (ochild(user, "password")) {
            logline("callhome client %s: user %s: configured password hashes are not supported; only the "
                    "--password of the command line is accepted", pc->name, uname);
        }
    }
    /* the command line's credentials keep working too */
    if (opts.authkey_count) {
        methods |= NC_SSH_AUTH_PUBLICKEY;
    }
    if (opts.password) {
        methods |= NC_SSH_AUTH_PASSWORD;
    }
    return nc_server_ssh_ch_client_endpt_set_auth_methods(pc->lnc_name, ep, methods);
}

static NC_TLS_CTN_MAPTYPE
ctn_map_type(const char *identity)
{
    const char *name = identity ? strchr(identity, ':') : NULL;

    name = name ? name + 1 : identity;
    if (!name) return NC_TLS_CTN_UNKNOWN;
    if (!strcmp(name, "specified")) return NC_TLS_CTN_SPECIFIED;
    if (!strcmp(name, "san-rfc822-name")) return NC_TLS_CTN_SAN_RFC822_NAME;
    if (!strcmp(name, "san-dns-name")) return NC_TLS_CTN_SAN_DNS_NAME;
    if (!strcmp(name, "san-ip-address")) return NC_TLS_CTN_SAN_IP_ADDRESS;
    if (!strcmp(name, "san-any")) return NC_TLS_CTN_SAN_ANY;
    if (!strcmp(name, "common-name")) return NC_TLS_CTN_COMMON_NAME;
    return NC_TLS_CTN_UNKNOWN;
}

static int
tls_endpoint(struct pushed_client *pc, const char *ep, struct lyd_node *tls)
{
    struct lyd_node *ctn;
    const char *key, *bag;
    int r = 0;

    if (!opts.tls_cert || !opts.tls_key || !opts.tls_ca_count) {
        logline("callhome client %s endpoint %s: TLS needs --tls-cert, --tls-key and --tls-ca on the command line",
                pc->name, ep);
        return -1;
    }
    key = oval(tls, "tls-server-parameters/server-identity/certificate/central-keystore-reference/asymmetric-key");
    if (!key || strcmp(key, "tls-key")) {
        logline("callhome client %s endpoint %s: server identity must reference keystore key tls-key", pc->name, ep);
        return -1;
    }
    r |= nc_server_tls_ch_client_endpt_set_server_cert(pc->lnc_name, ep, key);
    bag = oval(tls, "tls-server-parameters/client-authentication/ca-certs/central-truststore-reference");
    if (!bag) {
        bag = oval(tls, "tls-server-parameters/client-authentication/ee-certs/central-truststore-reference");
    }
    /* the trusted-cert-list callback serves the --tls-ca certificates (= bag listener-ca) */
    r |= nc_server_tls_ch_client_endpt_add_trusted_cert_list(pc->lnc_name, ep, bag ? bag : "listener-ca");
    OFOR_EACH(opath(tls, "netconf-server-parameters/client-identity-mappings"), "cert-to-name", ctn) {
        const char *id = oval(ctn, "id");
        const char *fp = oval(ctn, "fingerprint");

        r |= nc_server_tls_ch_client_endpt_add_ctn(pc->lnc_name, ep, (uint32_t)strtoul(id ? id : "0", NULL, 10),
                fp ? fp : "", ctn_map_type(oval(ctn, "map-type")), oval(ctn, "name"));
    }
    return r ? -1 : 0;
}

static int ch_session_clb(const char *client_name, struct nc_session *new_session);

/** Create the libnetconf2 call-home client for one netconf-client entry and start its thread. */
static int
add_pushed(struct lyd_node *entry, const char *name, char *sig)
{
    struct pushed_client *pc;
    struct lyd_node *ep, *ka;
    const char *v;
    int r = 0;

    if (pushed_count >= MAX_PUSHED) {
        return -1;
    }
    pc = &pushed[pushed_count];
    memset(pc, 0, sizeof *pc);
    pc->name = strdup(name);
    pc->sig = sig;
    if (was_removed(name) || nc_server_ch_is_client(name)) {
        (void)!asprintf(&pc->lnc_name, "%s#%u", name, ++generation);
    } else {
        pc->lnc_name = strdup(name);
    }
    if (nc_server_ch_add_client(pc->lnc_name)) {
        free(pc->name);
        free(pc->lnc_name);
        free(pc->sig);
        return -1;
    }
    pushed_count++;
    OFOR_EACH(ochild(entry, "endpoints"), "endpoint", ep) {
        const char *epname = oval(ep, "name"), *addr;
        struct lyd_node *tr = ochild(ep, "ssh");
        int is_ssh = tr != NULL;

        if (r) {
            break;
        }
        if (!is_ssh && !(tr = ochild(ep, "tls"))) {
            continue;
        }
        addr = oval(tr, "tcp-client-parameters/remote-address");
        v = oval(tr, "tcp-client-parameters/remote-port");
        if (!v) {
            v = is_ssh ? "4334" : "4335"; /* the IANA call-home ports, the model's defaults */
        }
        r |= nc_server_ch_client_add_endpt(pc->lnc_name, epname, is_ssh ? NC_TI_LIBSSH : NC_TI_OPENSSL);
        r |= nc_server_ch_client_endpt_set_address(pc->lnc_name, epname, addr);
        r |= nc_server_ch_client_endpt_set_port(pc->lnc_name, epname, (uint16_t)atoi(v));
        if (!r && (ka = opath(tr, "tcp-client-parameters/keepalives")) && oval(ka, "idle-time")) {
            r |= nc_server_ch_client_endpt_enable_keepalives(pc->lnc_name, epname, 1);
            r |= nc_server_ch_client_endpt_set_keepalives(pc->lnc_name, epname, atoi(oval(ka, "idle-time")),
                    atoi(oval(ka, "max-probes") ? oval(ka, "max-probes") : "0"),
                    atoi(oval(ka, "probe-interval") ? oval(ka, "probe-interval") : "0"));
        }
        if (!r) {
            r = is_ssh ? ssh_endpoint(pc, epname, tr) : tls_endpoint(pc, epname, tr);
        }
        if (!r) {
            logline("%s connecting to %s:%s (client %s endpoint %s)", is_ssh ? "ch-ssh" : "ch-tls", addr, v,
                    pc->name, epname);
        }
    }
    if (!r && (v = oval(entry, "connection-type/periodic/period"))) {
        r |= nc_server_ch_client_set_conn_type(pc->lnc_name, NC_CH_PERIOD);
        r |= nc_server_ch_client_periodic_set_period(pc->lnc_name, (uint16_t)atoi(v));
        if ((v = oval(entry, "connection-type/periodic/idle-timeout"))) {
            r |= nc_server_ch_client_periodic_set_idle_timeout(pc->lnc_name, (uint16_t)atoi(v));
        }
    } else if (!r) {
        r |= nc_server_ch_client_set_conn_type(pc->lnc_name, NC_CH_PERSIST);
    }
    if (!r && (v = oval(entry, "reconnect-strategy/start-with"))) {
        r |= nc_server_ch_client_set_start_with(pc->lnc_name, !strcmp(v, "last-connected") ? NC_CH_LAST_CONNECTED :
                !strcmp(v, "random-selection") ? NC_CH_RANDOM : NC_CH_FIRST_LISTED);
    }
    if (!r && (v = oval(entry, "reconnect-strategy/max-attempts"))) {
        r |= nc_server_ch_client_set_max_attempts(pc->lnc_name, (uint8_t)atoi(v));
    }
    if (!r) {
        r = nc_connect_ch_client_dispatch(pc->lnc_name, ch_session_clb);
    }
    if (r) {
        logline("callhome client %s: cannot apply the configuration", name);
        remove_pushed(pushed_count - 1);
        return -1;
    }
    logline("callhome client %s added", name);
    return 0;
}

/** Make the device's call-home clients match /netconf-server/call-home/netconf-client of running. */
static void
reconcile(void)
{
    struct lyd_node *entries[MAX_PUSHED], *e;
    char *sigs[MAX_PUSHED];
    const char *names[MAX_PUSHED];
    int i, n = 0, j, found;

    OFOR_EACH(opath(otop(running.opaq, NCS_NS, "netconf-server"), "call-home"), "netconf-client", e) {
        if (n >= MAX_PUSHED || !oval(e, "name")) {
            continue;
        }
        entries[n] = e;
        names[n] = oval(e, "name");
        sigs[n] = NULL;
        lyd_print_mem(&sigs[n], e, LYD_XML, LYD_PRINT_SHRINK);
        n++;
    }
    /* removed or changed clients go away */
    for (j = pushed_count - 1; j >= 0; j--) {
        found = 0;
        for (i = 0; i < n; i++) {
            if (!strcmp(pushed[j].name, names[i]) && sigs[i] && !strcmp(pushed[j].sig, sigs[i])) {
                found = 1;
            }
        }
        if (!found) {
            remove_pushed(j);
        }
    }
    /* new (or changed) clients come */
    for (i = 0; i < n; i++) {
        found = 0;
        for (j = 0; j < pushed_count; j++) {
            if (!strcmp(pushed[j].name, names[i])) {
                found = 1;
            }
        }
        if (!found && sigs[i]) {
            add_pushed(entries[i], names[i], sigs[i]); /* takes sigs[i] */
        } else {
            free(sigs[i]);
        }
    }
}

#else /* LNC2_V3 */

/*
 * libnetconf2 3.x: the server implements ietf-netconf-server, ietf-keystore and ietf-truststore
 * itself. The device keeps its own stored (opaque) datastores and checks as with 2.0, and whenever
 * running changes it hands libnetconf2 the whole configuration: the command line's part
 * (base_cfg: keystore with the real private keys, truststore, the command-line call-home clients,
 * the direct endpoint) merged with running's call-home netconf-client entries and truststore, as
 * XML parsed and validated against libnetconf2's own YANG modules, applied by
 * nc_server_config_setup_data(). So the pushed XML is checked by libnetconf2's implementation of
 * the model. A removed client is dropped from the configuration first (its thread ends), then its
 * sessions are closed; a changed client is removed and added again, as with 2.0.
 */
static struct ly_ctx *cfg_ctx;  /* libnetconf2's configuration modules */
/* held while nc_server_config_setup_data() runs (see acquire_ctx()) */
static pthread_mutex_t apply_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t applying_thread;
static volatile int applying;
/* the configuration being applied adds (or re-adds) call-home clients: only then do call-home
 * threads wait for it in acquire_ctx() */
static volatile int applying_adds;
static struct lyd_node *base_cfg;

/** The command line's users (authorized keys, password) on an SSH endpoint of a call-home
 * client (client != NULL) or of a listening endpoint. */
static int
add_cmdline_users(const char *client, const char *endpt, struct lyd_node **cfg)
{
    char keyname[32];
    int i, r = 0;

    for (i = 0; i < opts.authkey_count; i++) {
        snprintf(keyname, sizeof keyname, "cmdline-key%d", i);
        r |= client ? nc_server_config_add_ch_ssh_user_pubkey(cfg_ctx, client, endpt, opts.user, keyname,
                opts.authkeys[i], cfg) :
                nc_server_config_add_ssh_user_pubkey(cfg_ctx, endpt, opts.user, keyname, opts.authkeys[i], cfg);
    }
    if (opts.password) {
        r |= client ? nc_server_config_add_ch_ssh_user_password(cfg_ctx, client, endpt, opts.user, opts.password, cfg) :
                nc_server_config_add_ssh_user_password(cfg_ctx, endpt, opts.user, opts.password, cfg);
    }
    return r;
}

/** The pushed entries `sigs` (printed netconf-client XML) plus running's truststore, merged into
 * a copy of base_cfg, validated and applied. `adds`: the configuration adds a call-home client
 * (see acquire_ctx()). Returns 0 on success. */
static int
apply_config(char **sigs, int n, int adds)
{
    struct lyd_node *cfg = NULL, *pushed_tree = NULL, *ts;
    struct ly_set *set = NULL;
    char *xml = NULL, *tsxml = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&xml, &len);
    uint32_t k;
    int i, r = -1;

    if (n) {
        fprintf(out, "<netconf-server xmlns=\"%s\"><call-home>", NCS_NS);
        for (i = 0; i < n; i++) {
            fputs(sigs[i], out);
        }
        fputs("</call-home></netconf-server>", out);
    }
    if ((ts = otop(running.opaq, TS_NS, "truststore")) && !lyd_print_mem(&tsxml, ts, LYD_XML, LYD_PRINT_SHRINK)) {
        fputs(tsxml, out);
        free(tsxml);
    }
    fclose(out);
    if (len && lyd_parse_data_mem(cfg_ctx, xml, LYD_XML, LYD_PARSE_ONLY | LYD_PARSE_STRICT | LYD_PARSE_NO_STATE, 0,
            &pushed_tree)) {
        logline("configuration refused by libnetconf2's YANG modules: %s", ly_last_logmsg());
        goto cleanup;
    }
    if (base_cfg && lyd_dup_siblings(base_cfg, NULL, LYD_DUP_RECURSIVE, &cfg)) {
        goto cleanup;
    }
    if (pushed_tree && lyd_merge_siblings(&cfg, pushed_tree, LYD_MERGE_DESTRUCT)) {
        goto cleanup;
    }
    pushed_tree = NULL;
    /* the command line's credentials keep working on pushed SSH endpoints, as with 2.0 (not for a
     * user whose keys come from a truststore bag: that is a different case of the choice) */
    if (n && !lyd_find_xpath(cfg, "/ietf-netconf-server:netconf-server/call-home/netconf-client/endpoints/endpoint[ssh]",
            &set)) {
        for (k = 0; k < set->count; k++) {
            struct lyd_node *ep = set->dnodes[k], *ref = NULL;
            char path[256];
            const char *client = lyd_get_value(lyd_child(lyd_parent(lyd_parent(ep))));
            const char *epname = lyd_get_value(lyd_child(ep));

            snprintf(path, sizeof path, "ssh/ssh-server-parameters/client-authentication/users/user[name='%s']"
                    "/public-keys/central-truststore-reference", opts.user);
            if (!opts.user || !lyd_find_path(ep, path, 0, &ref)) {
                continue;
            }
            if (add_cmdline_users(client, epname, &cfg)) {
                logline("callhome client %s endpoint %s: cannot add the command line's users", client, epname);
            }
        }
        ly_set_free(set, NULL);
    }
    if (lyd_validate_all(&cfg, cfg_ctx, LYD_VALIDATE_NO_STATE, NULL)) {
        logline("configuration refused by libnetconf2's YANG modules: %s", ly_last_logmsg());
        goto cleanup;
    }
    pthread_mutex_lock(&apply_lock);
    applying_thread = pthread_self();
    applying_adds = adds;
    applying = 1;
    r = nc_server_config_setup_data(cfg);
    applying = 0;
    applying_adds = 0;
    pthread_mutex_unlock(&apply_lock);
    if (r) {
        r = -1;
        logline("libnetconf2 did not apply the configuration");
        goto cleanup;
    }
    r = 0;

cleanup:
    free(xml);
    lyd_free_siblings(pushed_tree);
    lyd_free_siblings(cfg);
    return r;
}

static void
log_endpoints(struct lyd_node *entry, const char *name)
{
    struct lyd_node *ep, *tr;
    const char *v;

    OFOR_EACH(ochild(entry, "endpoints"), "endpoint", ep) {
        int is_ssh = (tr = ochild(ep, "ssh")) != NULL;

        if (!is_ssh && !(tr = ochild(ep, "tls"))) {
            continue;
        }
        v = oval(tr, "tcp-client-parameters/remote-port");
        logline("%s connecting to %s:%s (client %s endpoint %s)", is_ssh ? "ch-ssh" : "ch-tls",
                oval(tr, "tcp-client-parameters/remote-address"), v ? v : (is_ssh ? "4334" : "4335"), name,
                oval(ep, "name"));
    }
}

static void
forget_pushed(int idx)
{
    logline("callhome client %s removed", pushed[idx].name);
    mark_sessions_for_close(pushed[idx].lnc_name);
    free(pushed[idx].name);
    free(pushed[idx].lnc_name);
    free(pushed[idx].sig);
    pushed[idx] = pushed[--pushed_count];
    memset(&pushed[pushed_count], 0, sizeof pushed[pushed_count]);
}

/** Make libnetconf2's call-home clients match /netconf-server/call-home/netconf-client of running. */
static void
reconcile(void)
{
    struct lyd_node *entries[MAX_PUSHED], *e;
    char *sigs[MAX_PUSHED], *applied[MAX_PUSHED];
    const char *names[MAX_PUSHED];
    int i, n = 0, j, found, gone = 0, napplied;

    OFOR_EACH(opath(otop(running.opaq, NCS_NS, "netconf-server"), "call-home"), "netconf-client", e) {
        if (n >= MAX_PUSHED || !oval(e, "name")) {
            continue;
        }
        entries[n] = e;
        names[n] = oval(e, "name");
        sigs[n] = NULL;
        lyd_print_mem(&sigs[n], e, LYD_XML, LYD_PRINT_SHRINK);
        n++;
    }
    /* removed or changed clients go away: first from libnetconf2's configuration (their threads
     * end), then their sessions (closed by the poll thread) */
    napplied = 0;
    for (j = pushed_count - 1; j >= 0; j--) {
        found = 0;
        for (i = 0; i < n; i++) {
            if (!strcmp(pushed[j].name, names[i]) && sigs[i] && !strcmp(pushed[j].sig, sigs[i])) {
                found = 1;
            }
        }
        if (!found) {
            pushed[j].lnc_name[0] = '\0'; /* marks it */
            gone++;
        }
    }
    if (gone) {
        for (j = 0; j < pushed_count; j++) {
            if (pushed[j].lnc_name[0]) {
                applied[napplied++] = pushed[j].sig;
            }
        }
        if (apply_config(applied, napplied, 0)) {
            logline("cannot remove call-home clients from libnetconf2's configuration");
        }
        for (j = pushed_count - 1; j >= 0; j--) {
            if (!pushed[j].lnc_name[0]) {
                free(pushed[j].lnc_name);
                pushed[j].lnc_name = strdup(pushed[j].name);
                forget_pushed(j);
            }
        }
    }
    /* new (or changed) clients come, one at a time, so that one refused entry does not keep the
     * others away */
    for (i = 0; i < n; i++) {
        found = 0;
        for (j = 0; j < pushed_count; j++) {
            if (!strcmp(pushed[j].name, names[i])) {
                found = 1;
            }
        }
        if (found || !sigs[i] || pushed_count >= MAX_PUSHED) {
            free(sigs[i]);
            continue;
        }
        napplied = 0;
        for (j = 0; j < pushed_count; j++) {
            applied[napplied++] = pushed[j].sig;
        }
        applied[napplied++] = sigs[i];
        log_endpoints(entries[i], names[i]);
        if (apply_config(applied, napplied, 1)) {
            logline("callhome client %s: cannot apply the configuration", names[i]);
            free(sigs[i]);
            continue;
        }
        pushed[pushed_count].name = strdup(names[i]);
        pushed[pushed_count].lnc_name = strdup(names[i]);
        pushed[pushed_count].sig = sigs[i];
        pushed_count++;
        logline("callhome client %s added", names[i]);
    }
}

#endif /* LNC2_V3 */

/* ------------------------------------------------ datastores and edits */

static struct lyd_node *
dup_tree(const struct lyd_node *tree)
{
    struct lyd_node *copy = NULL;

    if (tree && lyd_dup_siblings(tree, NULL, LYD_DUP_RECURSIVE | LYD_DUP_WITH_FLAGS, &copy)) {
        return NULL;
    }
    return copy;
}

static struct store
store_dup(const struct store *st)
{
    struct store copy = {dup_tree(st->typed), dup_tree(st->opaq)};

    return copy;
}

static void
store_free(struct store *st)
{
    lyd_free_siblings(st->typed);
    lyd_free_siblings(st->opaq);
    st->typed = st->opaq = NULL;
}

/** Replace running (takes ownership of `st`), refresh a clean candidate, apply. */
static void
set_running(struct store st, const char *why)
{
    store_free(&running);
    running = st;
    if (!candidate_dirty) {
        store_free(&candidate);
        candidate = store_dup(&running);
    }
    logline("running changed (%s)", why);
    reconcile();
}

static const char *
edit_op(const struct lyd_node *e, const char *inherited)
{
    struct lyd_meta *m = lyd_find_meta(e->meta, NULL, "ietf-netconf:operation");

    return m ? lyd_get_meta_value(m) : inherited;
}

/**
 * Apply the edit siblings `edit` (with nc:operation metadata) to the children of `parent`, or to
 * the top-level siblings `*top` when parent is NULL (RFC 6241 section 7.2 semantics for merge,
 * replace, create, delete, remove and none).
 */
static struct nc_server_reply *
apply_edit(const struct lyd_node *edit, struct lyd_node *parent, struct lyd_node **top, const char *inherited)
{
    const struct lyd_node *e;
    struct lyd_node *t, *dup, *first;
    struct nc_server_reply *err;
    const char *op;

    LY_LIST_FOR(edit, e) {
        if (!e->schema || lysc_is_key(e->schema)) {
            continue;
        }
        op = edit_op(e, inherited);
        first = parent ? lyd_child(parent) : *top;
        t = NULL;
        if (first) {
            lyd_find_sibling_first(first, e, &t);
        }
        if (t && (t->flags & LYD_DEFAULT) && !strcmp(op, "delete")) {
            t = NULL; /* a default value is not "present" */
        }
        if (!strcmp(op, "delete") || !strcmp(op, "remove") || (t && !strcmp(op, "replace"))) {
            if (!t) {
                if (!strcmp(op, "delete")) {
                    err = reply_error(NC_ERR_DATA_MISSING, NC_ERR_TYPE_APP, "Data to delete does not exist.");
                    return err;
                }
                continue;
            }
            if (!parent && *top == t) {
                *top = t->next;
            }
            lyd_free_tree(t);
            if (strcmp(op, "replace")) {
                continue;
            }
            t = NULL;
        }
        if (t && !strcmp(op, "create")) {
            return reply_error(NC_ERR_DATA_EXISTS, NC_ERR_TYPE_APP, "Data to create already exists.");
        }
        if (!t) {
            int recursive = strcmp(op, "none");

            if (lyd_dup_single(e, parent ? (struct lyd_node_inner *)parent : NULL,
                    (recursive ? LYD_DUP_RECURSIVE : 0) | LYD_DUP_NO_META, &dup)) {
                return reply_ly_error(NC_ERR_OP_FAILED, "Cannot copy the edit.");
            }
            if (!parent && lyd_insert_sibling(*top, dup, top)) {
                lyd_free_tree(dup);
                return reply_ly_error(NC_ERR_OP_FAILED, "Cannot insert the edit.");
            }
            if (recursive) {
                continue;
            }
            t = dup;
        }
        /* merge / none into an existing node */
        if (t->schema->nodetype == LYS_LEAF) {
            if (strcmp(op, "none")) {
                LY_ERR r = lyd_change_term(t, lyd_get_value(e));

                if (r && r != LY_EEXIST && r != LY_ENOT) {
                    return reply_ly_error(NC_ERR_INVALID_VALUE, "Cannot change the value.");
                }
                t->flags &= ~LYD_DEFAULT;
            }
        } else if (t->schema->nodetype & (LYS_CONTAINER | LYS_LIST)) {
            err = apply_edit(lyd_child(e), t, NULL, op);
            if (err) {
                return err;
            }
        }
    }
    return NULL;
}

/* ------------------------------------------------ edits and checks of the stored part */

/** nc:operation of an opaque edit element (an XML attribute there), else the inherited one. */
static const char *
stored_op(const struct lyd_node *e, const char *inherited)
{
    const struct lyd_attr *a;

    for (a = ((const struct lyd_node_opaq *)e)->attr; a; a = a->next) {
        if (!strcmp(a->name.name, "operation") && a->name.module_ns && !strcmp(a->name.module_ns, NC_NS)) {
            return a->value;
        }
    }
    return inherited;
}

/** Drop the XML attributes (nc:operation) of a copied edit subtree before it is stored. */
static void
strip_attrs(struct lyd_node *n)
{
    struct lyd_node *c;

    if (!n->schema) {
        while (((struct lyd_node_opaq *)n)->attr) {
            lyd_free_attr_single(ctx, ((struct lyd_node_opaq *)n)->attr);
        }
    }
    LY_LIST_FOR(lyd_child(n), c) {
        strip_attrs(c);
    }
}

/** The key child's name of a list entry of the stored part (see the top comment). */
static const char *
stored_key(const struct lyd_node *n)
{
    return !strcmp(node_name(n), "cert-to-name") ? "id" : "name";
}

/** The sibling (from `first` on) that the edit element `e` addresses, or NULL. */
static struct lyd_node *
stored_match(struct lyd_node *first, const struct lyd_node *e)
{
    const char *kv = lyd_child(e) ? oval(e, stored_key(e)) : NULL, *tv;
    struct lyd_node *t;

    for (t = first; t; t = t->next) {
        if (strcmp(node_name(t), node_name(e)) || !node_ns(t) || !node_ns(e) || strcmp(node_ns(t), node_ns(e))) {
            continue;
        }
        if (kv && (!(tv = oval(t, stored_key(e))) || strcmp(tv, kv))) {
            continue;
        }
        return t;
    }
    return NULL;
}

/** A copy of edit element `e` (recursive or not) without attributes, added under `parent` or
 * to the top-level siblings `*top`. */
static struct lyd_node *
stored_add(const struct lyd_node *e, struct lyd_node *parent, struct lyd_node **top, int recursive)
{
    struct lyd_node *dup = NULL;

    if (lyd_dup_single(e, NULL, recursive ? LYD_DUP_RECURSIVE : 0, &dup)) {
        return NULL;
    }
    strip_attrs(dup);
    if (parent ? lyd_insert_child(parent, dup) : lyd_insert_sibling(*top, dup, top)) {
        lyd_free_tree(dup);
        return NULL;
    }
    return dup;
}

/** Unlink and free `t`, keeping `*top` valid. */
static void
stored_free(struct lyd_node *t, struct lyd_node **top)
{
    if (top && *top == t) {
        *top = t->next;
    }
    lyd_free_tree(t);
}

/**
 * apply_edit() for the stored (opaque) part: the same RFC 6241 section 7.2 operations, with
 * elements matched by name, namespace and key value (stored_match()).
 */
static struct nc_server_reply *
apply_stored_edit(const struct lyd_node *edit, struct lyd_node *parent, struct lyd_node **top, const char *inherited)
{
    static const char *ops[] = {"merge", "replace", "create", "delete", "remove", "none", NULL};
    const struct lyd_node *e;
    struct lyd_node *t, *dup;
    struct nc_server_reply *err;
    const char *op;
    int i, known;

    LY_LIST_FOR(edit, e) {
        op = stored_op(e, inherited);
        for (i = 0, known = 0; ops[i]; i++) {
            known |= !strcmp(op, ops[i]);
        }
        if (!known) {
            return reply_error(NC_ERR_INVALID_VALUE, NC_ERR_TYPE_PROT, "Unknown nc:operation value.");
        }
        t = stored_match(parent ? lyd_child(parent) : *top, e);
        if (!strcmp(op, "delete") || !strcmp(op, "remove") || (t && !strcmp(op, "replace"))) {
            if (!t) {
                if (!strcmp(op, "delete")) {
                    return reply_error(NC_ERR_DATA_MISSING, NC_ERR_TYPE_APP, "Data to delete does not exist.");
                }
                continue;
            }
            stored_free(t, parent ? NULL : top);
            if (strcmp(op, "replace")) {
                continue;
            }
            t = NULL;
        }
        if (t && !strcmp(op, "create")) {
            return reply_error(NC_ERR_DATA_EXISTS, NC_ERR_TYPE_APP, "Data to create already exists.");
        }
        if (!t) {
            int recursive = strcmp(op, "none");

            if (!(dup = stored_add(e, parent, top, recursive))) {
                return reply_ly_error(NC_ERR_OP_FAILED, "Cannot store the edit.");
            }
            if (recursive) {
                continue;
            }
            t = dup;
        }
        if (lyd_child(e)) {
            /* merge / none into an existing inner node */
            if ((err = apply_stored_edit(lyd_child(e), t, NULL, op))) {
                return err;
            }
        } else if (strcmp(op, "none") && !lyd_child(t) && strcmp(oval(t, NULL) ? oval(t, NULL) : "",
                oval(e, NULL) ? oval(e, NULL) : "")) {
            /* merge into an existing leaf with another value: a copy of the edit's leaf (value and
             * prefixes) takes its place, in the same position (list keys stay first) */
            if (lyd_dup_single(e, NULL, 0, &dup)) {
                return reply_ly_error(NC_ERR_OP_FAILED, "Cannot store the edit.");
            }
            strip_attrs(dup);
            if (lyd_insert_before(t, dup)) {
                lyd_free_tree(dup);
                return reply_ly_error(NC_ERR_OP_FAILED, "Cannot store the edit.");
            }
            if (!parent) {
                *top = lyd_first_sibling(dup);
            }
            stored_free(t, parent ? NULL : top);
        }
    }
    return NULL;
}

/** Drop top-level stored containers that the edit emptied (they are non-presence containers). */
static void
prune_stored(struct lyd_node **top)
{
    struct lyd_node *n, *next;

    for (n = *top; n; n = next) {
        next = n->next;
        if (!lyd_child(n)) {
            stored_free(n, top);
        }
    }
}

static struct nc_server_reply *
stored_error(const char *path, const char *fmt, ...)
{
    struct lyd_node *err = nc_err(ctx, NC_ERR_INVALID_VALUE, NC_ERR_TYPE_APP);
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nc_err_set_msg(err, msg, "en");
    /* libyang 3 (libnetconf2 3.x) types error-path as yang:xpath1.0 and must resolve its prefixes
     * in the session's context, which has no ietf-netconf-server (see the top comment): the reply
     * could not be printed ("Failed to resolve prefix"), so 3.x replies without error-path */
    if (path && (!LY_V3 || ly_ctx_get_module_implemented(ctx, "ietf-netconf-server"))) {
        nc_err_set_path(err, path);
    }
    logline("edit refused: %s", msg);
    return nc_server_reply_err(err);
}

/**
 * The device's own checks of the stored part (it has no schema for it; see the top comment):
 * what it needs to apply a netconf-client, and that references name keys the device has.
 */
static struct nc_server_reply *
check_stored(const struct lyd_node *tree)
{
    struct lyd_node *ch = opath(otop(tree, NCS_NS, "netconf-server"), "call-home"), *cl, *ep, *tr, *hk, *u;
    const char *name, *epname, *ref;
    char path[256];
    int eps;

    if (ch && !onext(lyd_child(ch), "netconf-client")) {
        return stored_error("/ietf-netconf-server:netconf-server/call-home",
                "call-home needs at least one netconf-client entry (delete call-home instead).");
    }
    OFOR_EACH(ch, "netconf-client", cl) {
        if (!(name = oval(cl, "name"))) {
            return stored_error(NULL, "A netconf-client entry has no name.");
        }
        snprintf(path, sizeof path, "/ietf-netconf-server:netconf-server/call-home/netconf-client[name='%s']", name);
        eps = 0;
        OFOR_EACH(ochild(cl, "endpoints"), "endpoint", ep) {
            eps++;
            if (!(epname = oval(ep, "name"))) {
                return stored_error(path, "netconf-client %s: an endpoint has no name.", name);
            }
            if (!!ochild(ep, "ssh") + !!ochild(ep, "tls") != 1) {
                return stored_error(path, "netconf-client %s endpoint %s: give exactly one of ssh and tls.", name, epname);
            }
            tr = ochild(ep, "ssh") ? ochild(ep, "ssh") : ochild(ep, "tls");
            if (!oval(tr, "tcp-client-parameters/remote-address")) {
                return stored_error(path, "netconf-client %s endpoint %s: remote-address is missing.", name, epname);
            }
            OFOR_EACH(opath(tr, "ssh-server-parameters/server-identity"), "host-key", hk) {
                ref = oval(hk, "public-key/central-keystore-reference");
                if (ref && !keystore_has(tree, ref)) {
                    return stored_error(path, "netconf-client %s endpoint %s: host-key %s references keystore key "
                            "'%s', which does not exist.", name, epname, oval(hk, "name"), ref);
                }
            }
            ref = oval(tr, "tls-server-parameters/server-identity/certificate/central-keystore-reference/asymmetric-key");
            if (ref && !keystore_has(tree, ref)) {
                return stored_error(path, "netconf-client %s endpoint %s: the server identity references keystore key "
                        "'%s', which does not exist.", name, epname, ref);
            }
            OFOR_EACH(opath(tr, "ssh-server-parameters/client-authentication/users"), "user", u) {
                ref = oval(u, "public-keys/central-truststore-reference");
                if (ref && !truststore_public_key_bag(tree, ref)) {
                    return stored_error(path, "netconf-client %s endpoint %s: user %s references truststore "
                            "public-key bag '%s', which does not exist.", name, epname, oval(u, "name"), ref);
                }
            }
        }
        if (!eps) {
            return stored_error(path, "netconf-client %s has no endpoint.", name);
        }
    }
    return NULL;
}

/** Both parts of a datastore valid? (libyang for the typed part, check_stored() for the rest) */
static struct nc_server_reply *
validate_store(struct store *st, const char *what)
{
    if (lyd_validate_all(&st->typed, ctx, LYD_VALIDATE_NO_STATE, NULL)) {
        return reply_ly_error(NC_ERR_INVALID_VALUE, what);
    }
    return check_stored(st->opaq);
}

/**
 * The <config> of an edit-config, split in two: top-level elements in the namespaces of the
 * stored part (opaque nodes, with nc:operation as XML attributes) and everything else, which must
 * be valid data of the loaded modules (typed, with nc:operation metadata).
 */
static struct nc_server_reply *
parse_config_param(struct lyd_node *rpc, struct lyd_node **typed, struct lyd_node **opaq)
{
    struct lyd_node *node = NULL, *all = NULL, *n, *next;
    char *xml = NULL, *rest = NULL;
    LY_ERR r;

    *typed = *opaq = NULL;
    if (lyd_find_path(rpc, "config", 0, &node)) {
        return reply_error(NC_ERR_OP_NOT_SUPPORTED, NC_ERR_TYPE_PROT, "Only inline <config> is supported.");
    }
    if (lyd_any_value_str(node, &xml)) {
        return reply_error(NC_ERR_OP_FAILED, NC_ERR_TYPE_APP, "Cannot read <config>.");
    }
    if (!xml) {
        return NULL;
    }
    /* first pass: unknown namespaces become opaque nodes instead of errors */
    r = lyd_parse_data_mem(ctx, xml, LYD_XML, LYD_PARSE_ONLY | LYD_PARSE_OPAQ | LYD_PARSE_NO_STATE, 0, &all);
    free(xml);
    if (r) {
        return reply_ly_error(NC_ERR_INVALID_VALUE, "Bad <config>.");
    }
    for (n = all; n; n = next) {
        next = n->next;
        if (!n->schema && is_stored_ns(node_ns(n))) {
            if (all == n) {
                all = next;
            }
            lyd_unlink_tree(n);
            lyd_insert_sibling(*opaq, n, opaq);
        }
    }
    if (!all) {
        return NULL;
    }
    /* second pass, strict, over the rest: libyang's own errors for unknown or invalid data */
    r = lyd_print_mem(&rest, all, LYD_XML, LYD_PRINT_WITHSIBLINGS | LYD_PRINT_SHRINK);
    lyd_free_siblings(all);
    if (!r) {
        r = lyd_parse_data_mem(ctx, rest, LYD_XML, LYD_PARSE_ONLY | LYD_PARSE_STRICT | LYD_PARSE_NO_STATE, 0, typed);
    }
    free(rest);
    if (r) {
        lyd_free_siblings(*opaq);
        *opaq = NULL;
        return reply_ly_error(NC_ERR_INVALID_VALUE, "Bad <config>.");
    }
    return NULL;
}

/** edit-config on running or candidate; running is validated and applied at once. */
static struct nc_server_reply *
edit_config(struct lyd_node *rpc)
{
    struct lyd_node *node = NULL, *typed = NULL, *opaq = NULL;
    struct nc_server_reply *err;
    struct store work;
    const char *dflt = leaf_value(rpc, "default-operation");
    int to_candidate = !lyd_find_path(rpc, "target/candidate", 0, &node);

    if (!to_candidate && lyd_find_path(rpc, "target/running", 0, &node)) {
        return reply_error(NC_ERR_OP_NOT_SUPPORTED, NC_ERR_TYPE_PROT, "Only targets running and candidate are supported.");
    }
    if ((err = parse_config_param(rpc, &typed, &opaq))) {
        return err;
    }
    work = store_dup(to_candidate ? &candidate : &running);
    err = apply_edit(typed, NULL, &work.typed, dflt ? dflt : "merge");
    if (!err) {
        err = apply_stored_edit(opaq, NULL, &work.opaq, dflt ? dflt : "merge");
    }
    lyd_free_siblings(typed);
    lyd_free_siblings(opaq);
    if (!err) {
        prune_stored(&work.opaq);
        err = validate_store(&work, "Invalid edit.");
    }
    if (err) {
        store_free(&work);
        return err;
    }
    if (to_candidate) {
        store_free(&candidate);
        candidate = work;
        candidate_dirty = 1;
    } else {
        set_running(work, "edit-config");
    }
    return nc_server_reply_ok();
}

static void
rollback_pending(const char *why)
{
    struct store backup = pending.backup;

    pending.backup.typed = pending.backup.opaq = NULL;
    pending.active = 0;
    free(pending.persist);
    pending.persist = NULL;
    candidate_dirty = 0;
    logline("confirmed commit rolled back (%s)", why);
    set_running(backup, "rollback");
}

static struct nc_server_reply *
commit(struct lyd_node *rpc, struct nc_session *session)
{
    struct lyd_node *node = NULL;
    struct nc_server_reply *err;
    struct store work;
    const char *persist = leaf_value(rpc, "persist"), *persist_id = leaf_value(rpc, "persist-id");
    const char *timeout = leaf_value(rpc, "confirm-timeout");
    int confirmed = !lyd_find_path(rpc, "confirmed", 0, &node);

    if (pending.active) {
        /* a follow-up commit must come from the same session, or name the persist token */
        if (pending.persist ? (!persist_id || strcmp(persist_id, pending.persist)) :
                (pending.sid != nc_session_get_id(session))) {
            return reply_error(NC_ERR_INVALID_VALUE, NC_ERR_TYPE_PROT,
                    pending.persist ? "A confirmed commit is pending; give its persist-id." :
                    "A confirmed commit of another session is pending.");
        }
    } else if (persist_id) {
        return reply_error(NC_ERR_INVALID_VALUE, NC_ERR_TYPE_PROT, "No confirmed commit is pending.");
    }
    work = store_dup(&candidate);
    if ((err = validate_store(&work, "The candidate configuration is invalid."))) {
        store_free(&work);
        return err;
    }
    if (confirmed) {
        if (!pending.active) {
            pending.backup = store_dup(&running);
            pending.active = 1;
        }
        free(pending.persist);
        pending.persist = persist ? strdup(persist) : NULL;
        pending.sid = nc_session_get_id(session);
        clock_gettime(CLOCK_MONOTONIC, &pending.deadline);
        pending.deadline.tv_sec += timeout ? strtol(timeout, NULL, 10) : 600;
        logline("confirmed commit pending timeout=%ss persist=%s", timeout ? timeout : "600", persist ? "yes" : "no");
    } else if (pending.active) {
        pending.active = 0;
        store_free(&pending.backup);
        free(pending.persist);
        pending.persist = NULL;
        logline("confirmed commit confirmed");
    }
    candidate_dirty = 0;
    set_running(work, confirmed ? "confirmed commit" : "commit");
    return nc_server_reply_ok();
}

static struct nc_server_reply *
cancel_commit(struct lyd_node *rpc, struct nc_session *session)
{
    const char *persist_id = leaf_value(rpc, "persist-id");

    if (!pending.active) {
        return reply_error(NC_ERR_OP_FAILED, NC_ERR_TYPE_PROT, "No confirmed commit is pending.");
    }
    if (pending.persist ? (!persist_id || strcmp(persist_id, pending.persist)) :
            (pending.sid != nc_session_get_id(session))) {
        return reply_error(NC_ERR_INVALID_VALUE, NC_ERR_TYPE_PROT, "persist-id does not match the pending commit.");
    }
    rollback_pending("cancel-commit");
    return nc_server_reply_ok();
}

/** Top-level nodes of `tree` selected by a subtree filter's top-level elements (or all). */
static struct lyd_node *
filtered_copy(const struct lyd_node *tree, struct lyd_node *rpc)
{
    struct lyd_node *flt = NULL, *out = NULL, *copy;
    const struct lyd_node *n, *f;
    struct lyd_node_any *any;

    if (lyd_find_path(rpc, "filter", 0, &flt) || !flt) {
        return dup_tree(tree);
    }
    any = (struct lyd_node_any *)flt;
    if (any->value_type != LYD_ANYDATA_DATATREE || !any->value.tree) {
        return dup_tree(tree);
    }
    LY_LIST_FOR(tree, n) {
        LY_LIST_FOR(any->value.tree, f) {
            if (!strcmp(node_name(f), node_name(n)) && node_ns(f) && node_ns(n) && !strcmp(node_ns(f), node_ns(n))) {
                if (!lyd_dup_single(n, NULL, LYD_DUP_RECURSIVE | LYD_DUP_WITH_FLAGS, &copy)) {
                    lyd_insert_sibling(out, copy, &out);
                }
                break;
            }
        }
    }
    return out;
}

/** Reply to get / get-config: (a filtered copy of) a datastore inside the RPC's <data> output;
 * get adds the yang-library state. */
static struct nc_server_reply *
reply_with_data(struct lyd_node *rpc, const struct store *st, int with_state)
{
    struct lyd_node *output = NULL, *data = NULL, *state = NULL, *all, *opaq;

    if (lyd_dup_single(rpc, NULL, 0, &output)) {
        return NULL;
    }
    all = dup_tree(st->typed);
    if (with_state && !ly_ctx_get_yanglib_data(ctx, &state, "%u", ly_ctx_get_change_count(ctx))) {
        lyd_insert_sibling(all, state, &all);
    }
    if ((opaq = dup_tree(st->opaq))) {
        lyd_insert_sibling(all, opaq, &all);
    }
    data = filtered_copy(all, rpc);
    lyd_free_siblings(all);
#if LY_V3
    if (lyd_new_any(output, NULL, "data", data, LYD_ANYDATA_DATATREE, LYD_NEW_ANY_USE_VALUE | LYD_NEW_VAL_OUTPUT,
            NULL)) {
#else
    if (lyd_new_any(output, NULL, "data", data, 1, LYD_ANYDATA_DATATREE, 1, NULL)) {
#endif
        lyd_free_siblings(data);
        lyd_free_tree(output);
        return NULL;
    }
    return nc_server_reply_data(output, NC_WD_EXPLICIT, NC_PARAMTYPE_FREE);
}

static struct nc_server_reply *
rpc_clb(struct lyd_node *rpc, struct nc_session *session)
{
    const char *op = LYD_NAME(rpc);
    const char *mod = rpc->schema ? rpc->schema->module->name : "";
    struct lyd_node *node = NULL;

    logline("session %u rpc %s", nc_session_get_id(session), op);
#if LNC2_V3
    /* 2.0 serves these itself; 3.x hands every RPC to the global callback */
    if (!strcmp(mod, "ietf-netconf") && !strcmp(op, "close-session")) {
        return nc_clb_default_close_session(rpc, session);
    }
    if (!strcmp(mod, "ietf-netconf-monitoring") && !strcmp(op, "get-schema")) {
        return nc_clb_default_get_schema(rpc, session);
    }
#endif
    if (strcmp(mod, "ietf-netconf")) {
        return reply_error(NC_ERR_OP_NOT_SUPPORTED, NC_ERR_TYPE_PROT, NULL);
    }
    if (!strcmp(op, "get")) {
        return reply_with_data(rpc, &running, 1);
    }
    if (!strcmp(op, "get-config")) {
        return reply_with_data(rpc, lyd_find_path(rpc, "source/candidate", 0, &node) ? &running : &candidate, 0);
    }
    if (!strcmp(op, "edit-config")) {
        return edit_config(rpc);
    }
    if (!strcmp(op, "commit")) {
        return commit(rpc, session);
    }
    if (!strcmp(op, "cancel-commit")) {
        return cancel_commit(rpc, session);
    }
    if (!strcmp(op, "discard-changes")) {
        store_free(&candidate);
        candidate = store_dup(&running);
        candidate_dirty = 0;
        return nc_server_reply_ok();
    }
    if (!strcmp(op, "lock") || !strcmp(op, "unlock") || !strcmp(op, "kill-session")) {
        return nc_server_reply_ok();
    }
    return reply_error(NC_ERR_OP_NOT_SUPPORTED, NC_ERR_TYPE_PROT, NULL);
}

/** Called from libnetconf2's call-home thread with each newly established session. */
static int
ch_session_clb(const char *client_name, struct nc_session *new_session)
{
    char shown[160];
    int i;

    /* a client removed while this session was being set up: do not keep the session (2.0 never
     * reuses a removed client's name; 3.x ends the removed client's thread itself) */
    if (!LNC2_V3 && was_removed(client_name)) {
        logline("ch session for removed client %s dropped", client_name);
        return -1;
    }
    snprintf(shown, sizeof shown, "%s", client_name);
    if (strchr(shown, '#')) {
        *strchr(shown, '#') = '\0';
    }
    logline("%s session %u established client=%s user=%s host=%s port=%u", transport_label(new_session),
            nc_session_get_id(new_session), shown, nc_session_get_username(new_session),
            nc_session_get_host(new_session), nc_session_get_port(new_session));
    pthread_mutex_lock(&chs_lock);
    for (i = 0; i < MAX_CH_SESSIONS; i++) {
        if (!chs[i].session) {
            chs[i].session = new_session;
            snprintf(chs[i].client, sizeof chs[i].client, "%s", client_name);
            chs[i].close = 0;
            break;
        }
    }
    pthread_mutex_unlock(&chs_lock);
    if (nc_ps_add_session(ps, new_session)) {
        logline("cannot add session %u to the poll set", nc_session_get_id(new_session));
        forget_session(new_session);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- setup */

/** Load one module with the given features enabled ({NULL} = none, {"*", NULL} = all). */
static void
load_module(const char *name, const char *revision, const char **features)
{
    if (!ly_ctx_load_module(ctx, name, revision, features)) {
        die("cannot load YANG module %s%s%s (see --yang-dir)", name, revision ? "@" : "", revision ? revision : "");
    }
}

static void
init_context(void)
{
    /* :candidate + :confirmed-commit:1.1 + :writable-running; libnetconf2 derives the hello
     * capabilities from these features, and its RPC parser accepts commit & co. only with them */
    static const char *nc_features[] = {"writable-running", "candidate", "confirmed-commit", NULL};
    int i;

    ly_log_level(opts.verbose ? LY_LLVRB : LY_LLWRN);
#if LY_V3
    ly_set_log_clb(ly_print_clb3);
    ly_log_options(LY_LOLOG | LY_LOSTORE_LAST);
#else
    ly_set_log_clb(ly_print_clb, 1);
#endif
    if (ly_ctx_new(LNC2_DEVICE_YANG_DIR, 0, &ctx)) {
        die("cannot create libyang context");
    }
    for (i = 0; i < opts.yang_dir_count; i++) {
        if (ly_ctx_set_searchdir(ctx, opts.yang_dirs[i])) {
            die("bad --yang-dir %s", opts.yang_dirs[i]);
        }
    }
    if (!ly_ctx_load_module(ctx, "ietf-netconf", NULL, nc_features)) {
        die("cannot load ietf-netconf (give a --yang-dir that contains ietf-netconf.yang)");
    }
    load_module("ietf-netconf-monitoring", NULL, NULL);
    load_module(TEST_MODULE, NULL, NULL);

    if (lyd_new_path(NULL, ctx, "/" TEST_MODULE ":device/name", opts.name, 0, &running.typed)) {
        die("cannot create the running tree");
    }
    if (lyd_new_path(running.typed, ctx, "/" TEST_MODULE ":device/interface[name='eth0']/mtu", "1500", 0, NULL)) {
        die("cannot create the running tree");
    }
    if (lyd_validate_all(&running.typed, ctx, LYD_VALIDATE_NO_STATE, NULL)) {
        die("initial running tree is invalid");
    }
    running.opaq = make_keystore();
    candidate = store_dup(&running);
}

#if !LNC2_V3
static int
ch_client_start(const char *client, const char *endpt, NC_TRANSPORT_IMPL ti, const struct endpoint *ep)
{
    if (nc_server_ch_add_client(client) || nc_server_ch_client_add_endpt(client, endpt, ti) ||
            nc_server_ch_client_endpt_set_address(client, endpt, ep->host) ||
            nc_server_ch_client_endpt_set_port(client, endpt, ep->port) ||
            nc_server_ch_client_set_conn_type(client, NC_CH_PERSIST)) {
        return -1;
    }
    return 0;
}

/** Authorized keys and the password callback are global in libnetconf2 2.0: register once. */
static int
setup_ssh_auth(void)
{
    static int methods = -1;
    int i;

    if (methods >= 0) {
        return methods;
    }
    methods = 0;
    for (i = 0; i < opts.authkey_count; i++) {
        if (nc_server_ssh_add_authkey_path(opts.authkeys[i], opts.user)) {
            die("cannot load authorized key %s", opts.authkeys[i]);
        }
        methods |= NC_SSH_AUTH_PUBLICKEY;
    }
    if (opts.password) {
        nc_server_ssh_set_passwd_auth_clb(passwd_clb, NULL, NULL);
        methods |= NC_SSH_AUTH_PASSWORD;
    }
    return methods;
}

static void
setup_ssh(void)
{
    char client[128], keyname[32];
    const char *endpt = "ssh";
    int i, methods;

    snprintf(client, sizeof client, "%s-ssh", opts.name);
    if (ch_client_start(client, endpt, NC_TI_LIBSSH, &opts.ssh)) {
        die("cannot configure the SSH call-home client");
    }
    for (i = 0; i < opts.hostkey_count; i++) {
        snprintf(keyname, sizeof keyname, "hostkey%d", i);
        if (nc_server_ssh_ch_client_endpt_add_hostkey(client, endpt, keyname, -1)) {
            die("cannot add host key %s", opts.hostkeys[i]);
        }
    }
    methods = setup_ssh_auth();
    if (nc_server_ssh_ch_client_endpt_set_auth_methods(client, endpt, methods)) {
        die("cannot set SSH auth methods");
    }
    logline("ch-ssh connecting to %s:%u (client %s)", opts.ssh.host, opts.ssh.port, client);
    if (nc_connect_ch_client_dispatch(client, ch_session_clb)) {
        die("cannot start the SSH call-home thread");
    }
}

/** The listening (non-call-home) NETCONF over SSH endpoint of --direct-ssh. */
static void
setup_direct(void)
{
    const char *endpt = "direct";
    char keyname[32];
    int i;

    if (nc_server_add_endpt(endpt, NC_TI_LIBSSH) || nc_server_endpt_set_address(endpt, opts.direct.host) ||
            nc_server_endpt_set_port(endpt, opts.direct.port)) {
        die("cannot listen on %s:%u", opts.direct.host, opts.direct.port);
    }
    for (i = 0; i < opts.hostkey_count; i++) {
        snprintf(keyname, sizeof keyname, "hostkey%d", i);
        if (nc_server_ssh_endpt_add_hostkey(endpt, keyname, -1)) {
            die("cannot add host key %s", opts.hostkeys[i]);
        }
    }
    if (nc_server_ssh_endpt_set_auth_methods(endpt, setup_ssh_auth())) {
        die("cannot set SSH auth methods");
    }
    logline("direct-ssh listening on %s:%u", opts.direct.host, opts.direct.port);
}

static void
setup_tls(void)
{
    char client[128];
    const char *endpt = "tls";

    snprintf(client, sizeof client, "%s-tls", opts.name);
    if (ch_client_start(client, endpt, NC_TI_OPENSSL, &opts.tls)) {
        die("cannot configure the TLS call-home client");
    }
    if (nc_server_tls_ch_client_endpt_set_server_cert(client, endpt, "server-cert")) {
        die("cannot set the TLS server certificate");
    }
    if (nc_server_tls_ch_client_endpt_add_trusted_cert_list(client, endpt, "trusted")) {
        die("cannot add the trusted certificate list");
    }
    if (nc_server_tls_ch_client_endpt_add_ctn(client, endpt, 1, opts.ctn_fingerprint,
            opts.ctn_user ? NC_TLS_CTN_SPECIFIED : NC_TLS_CTN_COMMON_NAME, opts.ctn_user)) {
        die("cannot add the cert-to-name entry");
    }
    logline("ch-tls connecting to %s:%u (client %s)", opts.tls.host, opts.tls.port, client);
    if (nc_connect_ch_client_dispatch(client, ch_session_clb)) {
        die("cannot start the TLS call-home thread");
    }
}

#else /* LNC2_V3 */

/**
 * The body (base64 lines, newline separated) and label ("OPENSSH PRIVATE KEY", "CERTIFICATE", ...)
 * of the first PEM block of `path`. NULL if the file has none.
 */
static char *
pem_body(const char *path, char *label, size_t label_size)
{
    FILE *f = fopen(path, "r");
    char line[4096], *body = NULL, *end;
    size_t len = 0;
    FILE *out;
    int inside = 0, done = 0, lines = 0;

    if (!f) {
        return NULL;
    }
    out = open_memstream(&body, &len);
    while (!done && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!inside && !strncmp(line, "-----BEGIN ", 11) && (end = strstr(line + 11, "-----"))) {
            *end = '\0';
            snprintf(label, label_size, "%.63s", line + 11);
            inside = 1;
        } else if (inside && !strncmp(line, "-----END ", 9)) {
            done = 1;
        } else if (inside && line[0]) {
            fprintf(out, "%s%s", lines++ ? "\n" : "", line);
        }
    }
    fclose(f);
    fclose(out);
    if (!done || !lines) {
        free(body);
        return NULL;
    }
    return body;
}

/** The ietf-crypto-types private-key-format identity of a PEM private key label, as libnetconf2 3.x
 * reads it back: it writes "-----BEGIN <label>-----", the stored base64 and the footer to a file and
 * loads that with libssh (SSH) or OpenSSL (TLS), so the stored data is the PEM body of the file as
 * it is. OpenSSH (also ed25519) and PKCS#8 are libnetconf2's own identities (see its YANG module
 * libnetconf2-netconf-server, "openssh-private-key-format" and "private-key-info-format"). */
static const char *
privkey_format(const char *label)
{
    if (!strcmp(label, "OPENSSH PRIVATE KEY")) {
        return "libnetconf2-netconf-server:openssh-private-key-format";
    } else if (!strcmp(label, "RSA PRIVATE KEY")) {
        return "ietf-crypto-types:rsa-private-key-format";
    } else if (!strcmp(label, "EC PRIVATE KEY")) {
        return "ietf-crypto-types:ec-private-key-format";
    } else if (!strcmp(label, "PRIVATE KEY")) {
        return "libnetconf2-netconf-server:private-key-info-format";
    }
    return NULL;
}

/** base64 with a line break every 64 characters (a PEM body; libyang's binary type allows them). */
static char *
b64_lines(const unsigned char *data, int len)
{
    char *flat = b64(data, len), *out, *p;
    size_t n = strlen(flat), i;

    out = p = malloc(n + n / 64 + 2);
    for (i = 0; i < n; i++) {
        if (i && !(i % 64)) {
            *p++ = '\n';
        }
        *p++ = flat[i];
    }
    *p = '\0';
    free(flat);
    return out;
}

static char *
cert_body(const char *path, const char *what)
{
    char label[64], *body = pem_body(path, label, sizeof label);

    if (!body || strcmp(label, "CERTIFICATE")) {
        die("cannot read %s %s (a PEM certificate)", what, path);
    }
    return body;
}

/**
 * The keystore (host keys "hostkeyN", TLS key "tls-key" with certificate "tls-cert") and truststore
 * (certificate bag "listener-ca") of libnetconf2's configuration, written as ietf-keystore /
 * ietf-truststore data by the device itself. libnetconf2 3.7's helpers cannot be used for them:
 * nc_server_config_add_keystore_asym_key() converts an OpenSSH key through libssh's export (OpenSSH
 * format again with libssh 0.11) into OpenSSL, which rejects it ("Parsing certificate data failed
 * (unsupported)"), derives SSH public keys for RSA and EC keys only ("Private key type not
 * supported" for ed25519, server_config_util.c nc_server_config_util_evp_pkey_to_ssh_pubkey()), and
 * all the keystore/truststore helpers go through nc_server_config_create(), which returns the tree
 * at /ietf-netconf-server:netconf-server and so fails (without a message) while the tree holds no
 * netconf-server node yet.
 */
static char *
credentials_xml(void)
{
    char *xml = NULL, *pub, *body, label[64];
    const char *fmt;
    size_t len = 0;
    FILE *out = open_memstream(&xml, &len);
    ssh_key key = NULL, pubkey = NULL;
    int i;

    fprintf(out, "<keystore xmlns=\"%s\" xmlns:ct=\"%s\" xmlns:lnc=\"urn:cesnet:libnetconf2-netconf-server\">"
            "<asymmetric-keys>", KS_NS, CT_NS);
    for (i = 0; i < opts.hostkey_count; i++) {
        if (ssh_pki_import_privkey_file(opts.hostkeys[i], NULL, NULL, NULL, &key) != SSH_OK ||
                ssh_pki_export_privkey_to_pubkey(key, &pubkey) != SSH_OK ||
                ssh_pki_export_pubkey_base64(pubkey, &pub) != SSH_OK) {
            die("cannot read host key %s", opts.hostkeys[i]);
        }
        if (!(body = pem_body(opts.hostkeys[i], label, sizeof label)) || !(fmt = privkey_format(label))) {
            die("host key %s: not a PEM or OpenSSH private key file", opts.hostkeys[i]);
        }
        fprintf(out, "<asymmetric-key><name>hostkey%d</name><public-key-format>ct:ssh-public-key-format"
                "</public-key-format><public-key>%s</public-key><private-key-format>%s%s</private-key-format>"
                "<cleartext-private-key>%s</cleartext-private-key></asymmetric-key>", i, pub,
                strncmp(fmt, "ietf-crypto-types:", 18) ? "lnc:" : "ct:", strchr(fmt, ':') + 1, body);
        free(body);
        ssh_string_free_char(pub);
        ssh_key_free(pubkey);
        ssh_key_free(key);
        key = pubkey = NULL;
    }
    if (opts.tls_cert && opts.tls_key) {
        FILE *f = fopen(opts.tls_cert, "r");
        X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        unsigned char *der = NULL;
        char *spki, *crt;
        int dlen;

        if (f) {
            fclose(f);
        }
        if (!cert || (dlen = i2d_PUBKEY(X509_get0_pubkey(cert), &der)) <= 0) {
            die("cannot read --tls-cert %s", opts.tls_cert);
        }
        spki = b64_lines(der, dlen);
        OPENSSL_free(der);
        X509_free(cert);
        if (!(body = pem_body(opts.tls_key, label, sizeof label)) || !(fmt = privkey_format(label))) {
            die("--tls-key %s: not a PEM private key file", opts.tls_key);
        }
        crt = cert_body(opts.tls_cert, "--tls-cert");
        fprintf(out, "<asymmetric-key><name>tls-key</name><public-key-format>ct:subject-public-key-info-format"
                "</public-key-format><public-key>%s</public-key><private-key-format>%s%s</private-key-format>"
                "<cleartext-private-key>%s</cleartext-private-key><certificates><certificate><name>tls-cert</name>"
                "<cert-data>%s</cert-data></certificate></certificates></asymmetric-key>", spki,
                strncmp(fmt, "ietf-crypto-types:", 18) ? "lnc:" : "ct:", strchr(fmt, ':') + 1, body, crt);
        free(spki);
        free(body);
        free(crt);
    }
    fprintf(out, "</asymmetric-keys></keystore>");
    if (opts.tls_ca_count) {
        fprintf(out, "<truststore xmlns=\"%s\"><certificate-bags><certificate-bag><name>listener-ca</name>", TS_NS);
        for (i = 0; i < opts.tls_ca_count; i++) {
            body = cert_body(opts.tls_cas[i], "--tls-ca");
            fprintf(out, "<certificate><name>ca%d</name><cert-data>%s</cert-data></certificate>", i, body);
            free(body);
        }
        fprintf(out, "</certificate-bag></certificate-bags></truststore>");
    }
    fclose(out);
    return xml;
}

/**
 * libnetconf2's configuration modules in a context of their own (cfg_ctx), and ietf-ssh-server in the
 * device's context too: libnetconf2 3.x authenticates an SSH client with the context of the session
 * (the device's) and refuses to ("nc_session_ssh_msg: internal error") unless that context has
 * ietf-ssh-server, whose feature local-users-supported says that users come from the configuration
 * (session_server_ssh.c, nc_session_ssh_msg(): ly_ctx_get_module_latest(ctx, "ietf-ssh-server") and
 * lys_feature_value(mod, "local-users-supported")). ietf-ssh-server has groupings only, no data
 * nodes, so ietf-keystore & co. stay import-only there and the device keeps storing those subtrees
 * as opaque XML (see the top comment). Its features are the ones libnetconf2 enabled in cfg_ctx.
 */
static void
load_server_modules(void)
{
    const char *const *dirs;
    const char *features[32];
    const struct lys_module *mod;
    const struct lysp_feature *f = NULL;
    uint32_t idx = 0;
    int n = 0;

    if (nc_server_config_load_modules(&cfg_ctx)) {
        die("cannot load libnetconf2's configuration modules");
    }
    for (dirs = ly_ctx_get_searchdirs(cfg_ctx); dirs && *dirs; dirs++) {
        ly_ctx_set_searchdir(ctx, *dirs);
    }
    mod = ly_ctx_get_module_implemented(cfg_ctx, "ietf-ssh-server");
    if (!mod) {
        die("libnetconf2's configuration has no ietf-ssh-server module");
    }
    while ((f = lysp_feature_next(f, mod->parsed, &idx)) && n < 31) {
        if (f->flags & LYS_FENABLED) {
            features[n++] = f->name;
        }
    }
    features[n] = NULL;
    if (!ly_ctx_load_module(ctx, "ietf-ssh-server", mod->revision, features)) {
        die("cannot load ietf-ssh-server into the device's context");
    }
}

static int
ctn_leaf(const char *prefix, const char *leaf, const char *value)
{
    char path[600];

    snprintf(path, sizeof path, "%s%s", prefix, leaf);
    return lyd_new_path(base_cfg, cfg_ctx, path, value, LYD_NEW_PATH_UPDATE, NULL) ? 1 : 0;
}

/** The command line's part of libnetconf2's configuration (see apply_config()). */
static void
build_base_config(void)
{
    char client[128], keyname[32], port[8], *xml;
    struct lyd_node *creds = NULL;
    int i, r = 0;

    if (opts.ssh.host) {
        snprintf(client, sizeof client, "%s-ssh", opts.name);
        snprintf(port, sizeof port, "%u", opts.ssh.port);
        r |= nc_server_config_add_ch_address_port(cfg_ctx, client, "ssh", NC_TI_SSH, opts.ssh.host, port, &base_cfg);
        r |= nc_server_config_add_ch_persistent(cfg_ctx, client, &base_cfg);
        for (i = 0; i < opts.hostkey_count; i++) {
            snprintf(keyname, sizeof keyname, "hostkey%d", i);
            r |= nc_server_config_add_ch_ssh_keystore_ref(cfg_ctx, client, "ssh", keyname, keyname, &base_cfg);
        }
        r |= add_cmdline_users(client, "ssh", &base_cfg);
        if (r) {
            die("cannot configure the SSH call-home client");
        }
    }
    if (opts.tls.host) {
        snprintf(client, sizeof client, "%s-tls", opts.name);
        snprintf(port, sizeof port, "%u", opts.tls.port);
        r |= nc_server_config_add_ch_address_port(cfg_ctx, client, "tls", NC_TI_TLS, opts.tls.host, port, &base_cfg);
        r |= nc_server_config_add_ch_persistent(cfg_ctx, client, &base_cfg);
        r |= nc_server_config_add_ch_tls_keystore_ref(cfg_ctx, client, "tls", "tls-key", "tls-cert", &base_cfg);
        r |= nc_server_config_add_ch_tls_ca_cert_truststore_ref(cfg_ctx, client, "tls", "listener-ca", &base_cfg);
        if (opts.ctn_user) {
            r |= nc_server_config_add_ch_tls_ctn(cfg_ctx, client, "tls", 1, opts.ctn_fingerprint,
                    NC_TLS_CTN_SPECIFIED, opts.ctn_user, &base_cfg);
        } else {
            /* the helper insists on a name, which map type common-name does not have */
            char path[512];

            snprintf(path, sizeof path, "/ietf-netconf-server:netconf-server/call-home/netconf-client[name='%s']"
                    "/endpoints/endpoint[name='tls']/tls/netconf-server-parameters/client-identity-mappings"
                    "/cert-to-name[id='1']/", client);
            r |= ctn_leaf(path, "fingerprint", opts.ctn_fingerprint);
            r |= ctn_leaf(path, "map-type", "ietf-x509-cert-to-name:common-name");
        }
        if (r) {
            die("cannot configure the TLS call-home client");
        }
    }
    if (opts.direct.host) {
        r |= nc_server_config_add_address_port(cfg_ctx, "direct", NC_TI_SSH, opts.direct.host, opts.direct.port,
                &base_cfg);
        for (i = 0; i < opts.hostkey_count; i++) {
            snprintf(keyname, sizeof keyname, "hostkey%d", i);
            r |= nc_server_config_add_ssh_keystore_ref(cfg_ctx, "direct", keyname, keyname, &base_cfg);
        }
        r |= add_cmdline_users(NULL, "direct", &base_cfg);
        if (r) {
            die("cannot listen on %s:%u", opts.direct.host, opts.direct.port);
        }
    }
    /* after the netconf-server part: see credentials_xml() */
    xml = credentials_xml();
    if (lyd_parse_data_mem(cfg_ctx, xml, LYD_XML, LYD_PARSE_ONLY | LYD_PARSE_STRICT | LYD_PARSE_NO_STATE, 0, &creds) ||
            lyd_merge_siblings(&base_cfg, creds, LYD_MERGE_DESTRUCT)) {
        die("cannot build the keystore and truststore: %s", ly_last_logmsg());
    }
    free(xml);
}

/**
 * Called by a call-home thread before its new session authenticates the client. It waits (at most
 * a few seconds: applying a configuration may itself wait for a removed client's thread) until a
 * configuration being applied is complete: libnetconf2 3.7 starts a new client's thread while
 * nc_server_config_setup_data() is still adding that client's users, and a client that reaches
 * authentication before them meets a user key without data ("Invalid argument base64
 * (nc_server_ssh_create_ssh_pubkey())") and, retrying, a double free (seen on a loaded machine).
 * Only a configuration that adds clients is waited for: one that removes a client waits for that
 * client's thread to end, and a thread of it that waited here would hold the removal up until
 * this wait gave up, then authenticate against a configuration being taken apart (the same error
 * and a crash after a cancel-commit's rollback).
 */
static const struct ly_ctx *
acquire_ctx(void *data)
{
    struct timespec until;

    (void)data;
    if (applying_adds && !pthread_equal(applying_thread, pthread_self())) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        if (!pthread_mutex_timedlock(&apply_lock, &until)) {
            pthread_mutex_unlock(&apply_lock);
        }
    }
    return ctx;
}

static void
release_ctx(void *data)
{
    (void)data;
}

static int
ch_session_clb3(const char *client_name, struct nc_session *new_session, void *data)
{
    (void)data;
    return ch_session_clb(client_name, new_session);
}

/** Apply the command line's configuration; libnetconf2 starts the call-home threads itself. */
static void
setup_v3(void)
{
    nc_server_ch_set_dispatch_data(acquire_ctx, release_ctx, NULL, ch_session_clb3, NULL);
    if (opts.ssh.host) {
        logline("ch-ssh connecting to %s:%u (client %s-ssh)", opts.ssh.host, opts.ssh.port, opts.name);
    }
    if (opts.tls.host) {
        logline("ch-tls connecting to %s:%u (client %s-tls)", opts.tls.host, opts.tls.port, opts.name);
    }
    if (apply_config(NULL, 0, 1)) {
        die("cannot apply the command line's configuration");
    }
    if (opts.direct.host) {
        logline("direct-ssh listening on %s:%u", opts.direct.host, opts.direct.port);
    }
}

#endif /* LNC2_V3 */

static void
on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static const char *
term_reason_str(NC_SESSION_TERM_REASON r)
{
    switch (r) {
    case NC_SESSION_TERM_CLOSED: return "closed";
    case NC_SESSION_TERM_KILLED: return "killed";
    case NC_SESSION_TERM_DROPPED: return "dropped";
    case NC_SESSION_TERM_TIMEOUT: return "timeout";
    case NC_SESSION_TERM_BADHELLO: return "bad-hello";
    default: return "other";
    }
}

static pthread_mutex_t destroy_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t destroy_cond = PTHREAD_COND_INITIALIZER;
static int destroy_done;

static void *
destroy_thread(void *arg)
{
    (void)arg;
    nc_server_destroy();
    pthread_mutex_lock(&destroy_lock);
    destroy_done = 1;
    pthread_cond_signal(&destroy_cond);
    pthread_mutex_unlock(&destroy_lock);
    return NULL;
}

/** Run nc_server_destroy() with a time limit; return 1 if it finished. */
static int
destroy_bounded(int timeout_ms)
{
    pthread_t tid;
    struct timespec ts;
    int done;

    if (pthread_create(&tid, NULL, destroy_thread, NULL)) {
        return 0;
    }
    pthread_detach(tid);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&destroy_lock);
    while (!destroy_done) {
        if (pthread_cond_timedwait(&destroy_cond, &destroy_lock, &ts) == ETIMEDOUT) {
            break;
        }
    }
    done = destroy_done;
    pthread_mutex_unlock(&destroy_lock);
    return done;
}

/* ---------------------------------------------------------------- main */

int
main(int argc, char **argv)
{
    struct sigaction sa;
    struct nc_session *session;
    int r;

    setvbuf(stderr, NULL, _IONBF, 0);
    parse_args(argc, argv);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    verbose_lib = opts.verbose;
    ssh_port_for_log = opts.ssh.port;
    tls_port_for_log = opts.tls.port;
    /* always verbose inside: lnc2_print_clb filters and derives the connect-attempt events */
    nc_verbosity(NC_VERB_VERBOSE);
#if LNC2_V3
    nc_set_print_clb_session(lnc2_print_clb3);
#else
    nc_set_print_clb(lnc2_print_clb);
#endif

    init_context();
#if LNC2_V3
    if (nc_server_init()) {
#else
    if (nc_server_init(ctx)) {
#endif
        die("nc_server_init failed");
    }
    if (nc_server_set_capability(NCS_CAPABILITY)) {
        die("cannot add the ietf-netconf-server capability");
    }
    nc_set_global_rpc_clb(rpc_clb);
#if !LNC2_V3
    nc_server_ssh_set_hostkey_clb(hostkey_clb, NULL, NULL);
    nc_server_tls_set_server_cert_clb(server_cert_clb, NULL, NULL);
    nc_server_tls_set_trusted_cert_list_clb(trusted_cert_list_clb, NULL, NULL);
#else
    load_server_modules();
    build_base_config();
#endif

    ps = nc_ps_new();
    if (!ps) {
        die("nc_ps_new failed");
    }
    logline("started name=%s pid=%d", opts.name, (int)getpid());
#if LNC2_V3
    setup_v3();
#else
    if (opts.ssh.host) {
        setup_ssh();
    }
    if (opts.tls.host) {
        setup_tls();
    }
    if (opts.direct.host) {
        setup_direct();
    }
#endif

    while (!stop_requested) {
        if (opts.direct.host) {
            session = NULL;
#if LNC2_V3
            if (nc_accept(0, ctx, &session) == NC_MSG_HELLO) {
#else
            if (nc_accept(0, &session) == NC_MSG_HELLO) {
#endif
                logline("direct-ssh session %u established user=%s host=%s port=%u", nc_session_get_id(session),
                        nc_session_get_username(session), nc_session_get_host(session),
                        nc_session_get_port(session));
                if (nc_ps_add_session(ps, session)) {
                    nc_session_free(session, NULL);
                }
            }
        }
        if (pending.active && timespec_passed(&pending.deadline)) {
            rollback_pending("timeout");
        }
        close_marked_sessions();
        session = NULL;
        in_ps_poll = 1;
        r = nc_ps_poll(ps, 100, &session);
        in_ps_poll = 0;
        if (r & NC_PSPOLL_NOSESSIONS) {
            usleep(50 * 1000);
            continue;
        }
        if ((r & (NC_PSPOLL_SESSION_TERM | NC_PSPOLL_SESSION_ERROR)) && session) {
            logline("%s session %u closed reason=%s", transport_label(session), nc_session_get_id(session),
                    term_reason_str(nc_session_get_term_reason(session)));
            if (pending.active && !pending.persist && pending.sid == nc_session_get_id(session)) {
                /* RFC 6241 8.4.1: the session of a confirmed commit without persist ended */
                rollback_pending("session closed");
            }
            forget_session(session);
            nc_ps_del_session(ps, session);
            /* freeing the session wakes libnetconf2's call-home thread, which then reconnects */
            nc_session_free(session, NULL);
        } else if ((r & NC_PSPOLL_SSH_CHANNEL) && session && opts.extra_channels == EXTRA_SILENT) {
            /* the channel is open and its "netconf" subsystem accepted (libnetconf2 did both);
             * without nc_ps_accept_ssh_channel() no hello is sent and nothing read on it. It stays
             * until the SSH connection ends (libnetconf2 frees such starting sessions with the
             * session they belong to). */
            logline("%s session %u extra channel left silent", transport_label(session), nc_session_get_id(session));
        } else if ((r & NC_PSPOLL_SSH_CHANNEL) && session) {
            struct nc_session *extra = NULL;

            if (nc_ps_accept_ssh_channel(ps, &extra) == NC_MSG_HELLO) {
                logline("ch-ssh session %u established on a new channel", nc_session_get_id(extra));
                nc_ps_add_session(ps, extra);
            }
        }
    }

    logline("stopping");
    if (authkey_dir_made) {
        char cmd[64];

        snprintf(cmd, sizeof cmd, "rm -rf '%s'", authkey_dir);
        (void)!system(cmd);
    }
    /* close the established sessions properly */
    nc_ps_clear(ps, 1, NULL);
    nc_ps_free(ps);
    /* nc_server_destroy() joins the call-home threads, which may sit in a connect/handshake
     * timeout for many seconds; give it a moment, then leave anyway (the kernel closes the
     * sockets). */
    if (!destroy_bounded(2000)) {
        logline("call-home threads still busy, exiting without waiting");
        logline("stopped");
        _exit(0);
    }
    store_free(&running);
    store_free(&candidate);
    store_free(&pending.backup);
    ly_ctx_destroy(ctx);
    logline("stopped");
    return 0;
}
