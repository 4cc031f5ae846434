/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * lnc2-device - a small NETCONF device (server) built on libnetconf2 2.0.x that calls home
 * (RFC 8071) over SSH and/or TLS. It exists so that the netconf.callhome listener can be
 * tested against a NETCONF server implementation that nobody in this project wrote.
 *
 * Usage:
 *   lnc2-device --name NAME --yang-dir DIR [--yang-dir DIR ...] [--verbose]
 *       [--ssh-ch HOST:PORT --hostkey PRIVKEY_FILE [--hostkey ...] --user USER
 *        (--authorized-key PUBFILE [--authorized-key ...] | --password PW)]
 *       [--tls-ch HOST:PORT --tls-cert PEM --tls-key PEM --tls-ca CA_PEM [--tls-ca ...]
 *        --ctn-fingerprint FP [--ctn-user USER]]
 *
 *   --name             device name; stored in /callhome-test-device:device/name of the
 *                      running datastore and used in call-home client names.
 *   --yang-dir         YANG search directory (repeatable). Must provide ietf-netconf,
 *                      ietf-inet-types, ietf-netconf-acm, ietf-netconf-monitoring, ietf-yang-types
 *                      (Debian ships none for libnetconf2; pyang's copies work). The directory of
 *                      this source file (callhome-test-device.yang) is always searched as well.
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
 *   --verbose          forward libnetconf2 verbose messages too (default: warnings and errors).
 *
 * Behaviour: one call-home client per transport ("NAME-ssh", "NAME-tls"), connection type
 * persistent, one endpoint each. libnetconf2 retries about once a second while the listener is
 * unreachable and reconnects at once when an established session ends.
 * RPCs: get / get-config return the running tree (filters are ignored, the whole tree is
 * returned), edit-config merges <config> into running (target running only; nc:operation
 * attributes other than merge are not supported), lock / unlock / kill-session reply <ok/>,
 * close-session and get-schema are handled by libnetconf2, any other RPC of the loaded models
 * (copy-config, delete-config, ...) gets operation-not-supported. RPCs that are not in the
 * loaded models at all (e.g. <commit/>, as :candidate is not enabled) are rejected by
 * libnetconf2's parser itself with an operation-failed rpc-error.
 *
 * Every event is one line on stderr, prefixed "lnc2-device: ", e.g.
 *   lnc2-device: started name=dev1 pid=1234
 *   lnc2-device: ch-ssh connecting to 127.0.0.1:4334 (client dev1-ssh)   (once, at start)
 *   lnc2-device: ch-ssh connect attempt to 127.0.0.1:4334                (every TCP attempt)
 *   lnc2-device: ch-ssh tcp connected to 127.0.0.1:4334
 *   lnc2-device: ssh password auth for user=netconf accepted             (or rejected)
 *   lnc2-device: ch-ssh session 1 established client=dev1-ssh user=netconf host=127.0.0.1 port=4334
 *   lnc2-device: session 1 rpc get-config
 *   lnc2-device: ch-ssh session 1 closed reason=closed
 *   lnc2-device: stopping
 *   lnc2-device: stopped
 *   lnc2-device: libnetconf2 ERR: ...  /  libyang WRN: ...   (library messages)
 * The same with "ch-tls" for TLS. With --verbose, libnetconf2/libyang verbose messages too.
 * SIGTERM / SIGINT stop the device cleanly (exit status 0).
 */
#define _GNU_SOURCE

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

/* Debian's nc_server.h defines these itself; keep them for other builds. */
#ifndef NC_ENABLED_SSH
#define NC_ENABLED_SSH
#endif
#ifndef NC_ENABLED_TLS
#define NC_ENABLED_TLS
#endif
#include <nc_server.h>

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
    if (level <= NC_VERB_WARNING || verbose_lib) {
        logline("libnetconf2 %s: %s", names[level <= 4 ? level : 4], msg);
    }
}

static void
ly_print_clb(LY_LOG_LEVEL level, const char *msg, const char *path)
{
    static const char *names[] = {"ERR", "WRN", "VRB", "DBG"};

    logline("libyang %s: %s%s%s", names[level <= 3 ? level : 3], msg, path ? " path=" : "", path ? path : "");
}

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
} opts;

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
            " [--ctn-user USER]]\n");
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
        default: usage();
        }
    }
    if (optind != argc || !opts.name) {
        usage();
    }
    if (!opts.ssh.host && !opts.tls.host) {
        die("nothing to do: give --ssh-ch and/or --tls-ch");
    }
    if (opts.ssh.host) {
        if (!opts.hostkey_count || !opts.user || (!opts.authkey_count && !opts.password)) {
            die("--ssh-ch needs --hostkey, --user and --authorized-key and/or --password");
        }
    }
    if (opts.tls.host) {
        if (!opts.tls_cert || !opts.tls_key || !opts.tls_ca_count || !opts.ctn_fingerprint) {
            die("--tls-ch needs --tls-cert, --tls-key, --tls-ca and --ctn-fingerprint");
        }
    }
}

/* ---------------------------------------------------------------- callbacks */

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

/* ---------------------------------------------------------------- datastore */

/* Only the poll thread (main) touches these after start-up. */
static struct ly_ctx *ctx;
static struct lyd_node *running;
static struct nc_pollsession *ps;

static const char *
transport_label(const struct nc_session *session)
{
    switch (nc_session_get_ti(session)) {
    case NC_TI_LIBSSH: return "ch-ssh";
    case NC_TI_OPENSSL: return "ch-tls";
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

/** Reply to get / get-config: a copy of the running tree inside the RPC's <data> output. */
static struct nc_server_reply *
reply_with_running(struct lyd_node *rpc)
{
    struct lyd_node *output = NULL, *data = NULL;

    if (lyd_dup_single(rpc, NULL, 0, &output)) {
        return NULL;
    }
    if (running && lyd_dup_siblings(running, NULL, LYD_DUP_RECURSIVE, &data)) {
        lyd_free_tree(output);
        return NULL;
    }
    if (lyd_new_any(output, NULL, "data", data, 1, LYD_ANYDATA_DATATREE, 1, NULL)) {
        lyd_free_siblings(data);
        lyd_free_tree(output);
        return NULL;
    }
    return nc_server_reply_data(output, NC_WD_EXPLICIT, NC_PARAMTYPE_FREE);
}

/** edit-config: merge <config> into running, validate, keep the old tree on failure. */
static struct nc_server_reply *
edit_config(struct lyd_node *rpc)
{
    struct lyd_node *node = NULL, *edit = NULL, *candidate = NULL;
    char *xml = NULL;
    LY_ERR r;

    if (lyd_find_path(rpc, "target/running", 0, &node)) {
        return reply_error(NC_ERR_OP_NOT_SUPPORTED, NC_ERR_TYPE_PROT, "Only target running is supported.");
    }
    if (lyd_find_path(rpc, "config", 0, &node)) {
        return reply_error(NC_ERR_OP_NOT_SUPPORTED, NC_ERR_TYPE_PROT, "Only inline <config> is supported.");
    }
    if (lyd_any_value_str(node, &xml)) {
        return reply_error(NC_ERR_OP_FAILED, NC_ERR_TYPE_APP, "Cannot read <config>.");
    }
    r = xml ? lyd_parse_data_mem(ctx, xml, LYD_XML, LYD_PARSE_ONLY | LYD_PARSE_STRICT | LYD_PARSE_NO_STATE, 0,
            &edit) : LY_SUCCESS;
    free(xml);
    if (r) {
        return reply_error(NC_ERR_INVALID_VALUE, NC_ERR_TYPE_APP, ly_errmsg(ctx) ? ly_errmsg(ctx) : "Bad <config>.");
    }
    if (running && lyd_dup_siblings(running, NULL, LYD_DUP_RECURSIVE, &candidate)) {
        lyd_free_siblings(edit);
        return NULL;
    }
    r = lyd_merge_siblings(&candidate, edit, LYD_MERGE_DESTRUCT);
    if (r) {
        lyd_free_siblings(edit);
    }
    if (!r) {
        r = lyd_validate_all(&candidate, ctx, LYD_VALIDATE_NO_STATE, NULL);
    }
    if (r) {
        lyd_free_siblings(candidate);
        return reply_error(NC_ERR_INVALID_VALUE, NC_ERR_TYPE_APP, ly_errmsg(ctx) ? ly_errmsg(ctx) : "Invalid edit.");
    }
    lyd_free_siblings(running);
    running = candidate;
    return nc_server_reply_ok();
}

static struct nc_server_reply *
rpc_clb(struct lyd_node *rpc, struct nc_session *session)
{
    const char *op = LYD_NAME(rpc);
    const char *mod = rpc->schema ? rpc->schema->module->name : "";

    logline("session %u rpc %s", nc_session_get_id(session), op);
    if (strcmp(mod, "ietf-netconf")) {
        return reply_error(NC_ERR_OP_NOT_SUPPORTED, NC_ERR_TYPE_PROT, NULL);
    }
    if (!strcmp(op, "get") || !strcmp(op, "get-config")) {
        return reply_with_running(rpc);
    }
    if (!strcmp(op, "edit-config")) {
        return edit_config(rpc);
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
    logline("%s session %u established client=%s user=%s host=%s port=%u", transport_label(new_session),
            nc_session_get_id(new_session), client_name, nc_session_get_username(new_session),
            nc_session_get_host(new_session), nc_session_get_port(new_session));
    if (nc_ps_add_session(ps, new_session)) {
        logline("cannot add session %u to the poll set", nc_session_get_id(new_session));
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- setup */

static void
init_context(void)
{
    static const char *nc_features[] = {"writable-running", NULL};
    char path[256];
    int i;

    ly_log_level(opts.verbose ? LY_LLVRB : LY_LLWRN);
    ly_set_log_clb(ly_print_clb, 1);
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
    if (!ly_ctx_load_module(ctx, "ietf-netconf-monitoring", NULL, NULL)) {
        die("cannot load ietf-netconf-monitoring");
    }
    if (!ly_ctx_load_module(ctx, TEST_MODULE, NULL, NULL)) {
        die("cannot load " TEST_MODULE);
    }
    snprintf(path, sizeof path, "/" TEST_MODULE ":device/name");
    if (lyd_new_path(NULL, ctx, path, opts.name, 0, &running)) {
        die("cannot create the running tree");
    }
    if (lyd_new_path(running, ctx, "/" TEST_MODULE ":device/interface[name='eth0']/mtu", "1500", 0, NULL)) {
        die("cannot create the running tree");
    }
    if (lyd_validate_all(&running, ctx, LYD_VALIDATE_NO_STATE, NULL)) {
        die("initial running tree is invalid");
    }
}

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

static void
setup_ssh(void)
{
    char client[128], keyname[32];
    const char *endpt = "ssh";
    int i, methods = 0;

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
    if (nc_server_ssh_ch_client_endpt_set_auth_methods(client, endpt, methods)) {
        die("cannot set SSH auth methods");
    }
    logline("ch-ssh connecting to %s:%u (client %s)", opts.ssh.host, opts.ssh.port, client);
    if (nc_connect_ch_client_dispatch(client, ch_session_clb)) {
        die("cannot start the SSH call-home thread");
    }
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
    nc_set_print_clb(lnc2_print_clb);

    init_context();
    if (nc_server_init(ctx)) {
        die("nc_server_init failed");
    }
    nc_set_global_rpc_clb(rpc_clb);
    nc_server_ssh_set_hostkey_clb(hostkey_clb, NULL, NULL);
    nc_server_tls_set_server_cert_clb(server_cert_clb, NULL, NULL);
    nc_server_tls_set_trusted_cert_list_clb(trusted_cert_list_clb, NULL, NULL);

    ps = nc_ps_new();
    if (!ps) {
        die("nc_ps_new failed");
    }
    logline("started name=%s pid=%d", opts.name, (int)getpid());
    if (opts.ssh.host) {
        setup_ssh();
    }
    if (opts.tls.host) {
        setup_tls();
    }

    while (!stop_requested) {
        session = NULL;
        r = nc_ps_poll(ps, 100, &session);
        if (r & NC_PSPOLL_NOSESSIONS) {
            usleep(50 * 1000);
            continue;
        }
        if ((r & (NC_PSPOLL_SESSION_TERM | NC_PSPOLL_SESSION_ERROR)) && session) {
            logline("%s session %u closed reason=%s", transport_label(session), nc_session_get_id(session),
                    term_reason_str(nc_session_get_term_reason(session)));
            nc_ps_del_session(ps, session);
            /* freeing the session wakes libnetconf2's call-home thread, which then reconnects */
            nc_session_free(session, NULL);
        } else if ((r & NC_PSPOLL_SSH_CHANNEL) && session) {
            struct nc_session *extra = NULL;

            if (nc_ps_accept_ssh_channel(ps, &extra) == NC_MSG_HELLO) {
                logline("ch-ssh session %u established on a new channel", nc_session_get_id(extra));
                nc_ps_add_session(ps, extra);
            }
        }
    }

    logline("stopping");
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
    lyd_free_siblings(running);
    ly_ctx_destroy(ctx);
    logline("stopped");
    return 0;
}
