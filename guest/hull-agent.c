/*
 * hull-agent: Hull's guest agent, PID 1 of a Hull microVM after /init.
 *
 * /init (a busybox script in the initramfs) loads the virtio modules and execs this
 * program. The agent then owns the guest: it opens the virtio-serial port named
 * "hull.agent", says it is ready, and serves requests for as long as the VM lives.
 * Several processes can run at once (a container's main process and `hull exec`s).
 *
 * Both directions carry frames: one stream byte, a 3-byte big-endian process id, a
 * 4-byte big-endian length, then the payload (Docker's stdcopy layout with the id
 * in its three spare bytes). Host to guest:
 *   stream 0: stdin for process id (an empty payload closes it)
 *   stream 3: a JSON request
 *     {"type":"run","id":N,"args":[...],"env":["K=V",...],"cwd":"/","uid":0,"gid":0,
 *      "gids":[...],"hostname":"x","realtime_ns":N,"main":true,"tty":false,
 *      "stdin":false,"rows":24,"cols":80,"mounts":["TAG rw|ro /target",...],
 *      "interfaces":["eth0 MAC ADDR/PREFIX GATEWAY|- MTU"],"files":["/etc/hosts\nTEXT",...]}
 *     {"type":"signal","id":N,"signal":S}
 *     {"type":"stats","id":N}                     guest figures for `hull stats` and `top`
 *     {"type":"resize","id":N,"rows":R,"cols":C}
 *     {"type":"poweroff"}
 * Guest to host:
 *   stream 1, 2: stdout and stderr of process id (a tty's output is all stream 1)
 *   stream 3: a JSON control message
 *     {"type":"ready","id":0,"code":0}            once, when the port is open
 *     {"type":"exit","id":N,"code":C}             process id ended (128+sig if killed)
 *     {"type":"error","id":N,"code":C,"message":"..."}  it could not start (126/127/125)
 *     {"type":"stats","id":N,"code":0,...}        the answer to a stats request
 *
 * The root disk (/dev/vda, the image's erofs) is mounted only when the first run
 * request comes, under a tmpfs-backed overlay at /mnt/root. That is what makes warm
 * start work: a VM saved while idle has not looked at its disk yet, so the host can
 * restore it with a different image's file behind the same device. The disk's
 * cached blocks (the kernel's partition scan read the template's placeholder) are
 * dropped before the mount. A run request's "mounts" are virtiofs shares (volumes)
 * mounted into that root before the process starts.
 *
 * When the "main" process ends, the agent kills every other process in the guest
 * (as a container's PID 1 ending ends its PID namespace) and reports them ended, so
 * a VM saved while idle can be restored and reused (warm start).
 *
 * The main process's request also carries the guest's network (eth0 on a host tap:
 * MAC, address, default route, MTU; lo up) and the /etc files the engine wrote for
 * it (hosts, resolv.conf, hostname), applied before the process starts. A restored
 * VM's card has its template's MAC until the agent sets the one the host chose.
 *
 * Built statically (gcc -static -O2) by hull/vm/agent.py; no library beyond libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "hull.agent"
#define GUEST_ROOT "/mnt/root"
#define ROOT_DEVICE "/dev/vda"
#ifndef BLKFLSBUF
#define BLKFLSBUF _IO(0x12, 97)
#endif
#define MAX_FRAME (1 << 20)
#define MAX_ITEMS 4096
#define MAX_MOUNTS 64
#define MAX_NET_ITEMS 8
#define GUEST_IFNAME "eth0"
#define MAX_PROCS 64
#define STDIN_LIMIT (4 << 20) /* stdin held for a process that does not read it */

enum { STREAM_STDIN = 0, STREAM_STDOUT = 1, STREAM_STDERR = 2, STREAM_CONTROL = 3 };

static int port_fd = -1;

/* ---------- output to the host ---------- */

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                poll(&pfd, 1, 100);
                continue;
            }
            return; /* host gone: nothing useful left to do with this frame */
        }
        p += n;
        len -= (size_t)n;
    }
}

static void send_frame(int stream, uint32_t id, const void *data, size_t len) {
    unsigned char header[8] = {(unsigned char)stream, (unsigned char)(id >> 16),
                               (unsigned char)(id >> 8), (unsigned char)id,
                               (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                               (unsigned char)(len >> 8), (unsigned char)len};
    write_all(port_fd, header, sizeof header);
    if (len) write_all(port_fd, data, len);
}

/* A JSON string literal of s, appended to out (bounded by cap). */
static size_t json_quote(char *out, size_t cap, const char *s) {
    size_t n = 0;
    if (n < cap) out[n++] = '"';
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    if (n < cap) out[n++] = '"';
    return n;
}

static void send_control(const char *type, uint32_t id, int code, const char *message) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "{\"type\":\"%s\",\"id\":%u,\"code\":%d", type, id, code);
    if (message) {
        n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"message\":");
        n += (int)json_quote(buf + n, sizeof buf - (size_t)n - 2, message);
    }
    n += snprintf(buf + n, sizeof buf - (size_t)n, "}");
    send_frame(STREAM_CONTROL, id, buf, (size_t)n);
}

static void console(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hull-agent: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* ---------- a small JSON reader for the request shape above ---------- */

struct request {
    char type[32];
    uint32_t id;
    char *args[MAX_ITEMS + 1];
    int nargs;
    char *env[MAX_ITEMS + 1];
    int nenv;
    char *mounts[MAX_MOUNTS + 1];
    int nmounts;
    char *interfaces[MAX_NET_ITEMS + 1];
    int ninterfaces;
    char *files[MAX_NET_ITEMS + 1];
    int nfiles;
    char *cwd;
    char *hostname;
    long long uid, gid;
    gid_t gids[256];
    int ngids;
    long long realtime_ns;
    int main, tty, with_stdin;
    long long signal, rows, cols;
};

struct parser {
    char *p;
    int error;
};

static void skip_ws(struct parser *ps) {
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\r' || *ps->p == '\n') ps->p++;
}

static int expect(struct parser *ps, char c) {
    skip_ws(ps);
    if (*ps->p != c) {
        ps->error = 1;
        return 0;
    }
    ps->p++;
    return 1;
}

static void put_utf8(char **out, unsigned cp) {
    char *o = *out;
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *out = o;
}

static int hex4(const char *s, unsigned *value) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *value = v;
    return 1;
}

/* Decodes a string in place (the output never outgrows the escaped input). */
static char *parse_string(struct parser *ps) {
    if (!expect(ps, '"')) return NULL;
    char *start = ps->p, *out = ps->p;
    while (*ps->p && *ps->p != '"') {
        char c = *ps->p++;
        if (c != '\\') {
            *out++ = c;
            continue;
        }
        c = *ps->p++;
        switch (c) {
        case 'n': *out++ = '\n'; break;
        case 't': *out++ = '\t'; break;
        case 'r': *out++ = '\r'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'u': {
            unsigned cp;
            if (!hex4(ps->p, &cp)) { ps->error = 1; return NULL; }
            ps->p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                unsigned lo;
                if (hex4(ps->p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    ps->p += 6;
                }
            }
            if (cp == 0) { ps->error = 1; return NULL; }
            put_utf8(&out, cp);
            break;
        }
        case '"': case '\\': case '/': *out++ = c; break;
        default: ps->error = 1; return NULL;
        }
    }
    if (*ps->p != '"') { ps->error = 1; return NULL; }
    ps->p++;
    *out = '\0';
    return start;
}

static long long parse_int(struct parser *ps) {
    skip_ws(ps);
    char *end;
    errno = 0;
    long long v = strtoll(ps->p, &end, 10);
    if (end == ps->p || errno) { ps->error = 1; return 0; }
    ps->p = end;
    return v;
}

static void skip_value(struct parser *ps);

static int parse_bool(struct parser *ps) {
    skip_ws(ps);
    if (!strncmp(ps->p, "true", 4)) { ps->p += 4; return 1; }
    if (!strncmp(ps->p, "false", 5)) { ps->p += 5; return 0; }
    ps->error = 1;
    return 0;
}

static void skip_container(struct parser *ps, char open, char close) {
    expect(ps, open);
    skip_ws(ps);
    if (*ps->p == close) { ps->p++; return; }
    while (!ps->error) {
        if (open == '{') { parse_string(ps); expect(ps, ':'); }
        skip_value(ps);
        skip_ws(ps);
        if (*ps->p == ',') { ps->p++; continue; }
        expect(ps, close);
        return;
    }
}

static void skip_value(struct parser *ps) {
    skip_ws(ps);
    char c = *ps->p;
    if (c == '"') parse_string(ps);
    else if (c == '{') skip_container(ps, '{', '}');
    else if (c == '[') skip_container(ps, '[', ']');
    else if (!strncmp(ps->p, "true", 4)) ps->p += 4;
    else if (!strncmp(ps->p, "false", 5)) ps->p += 5;
    else if (!strncmp(ps->p, "null", 4)) ps->p += 4;
    else {
        char *end;
        strtod(ps->p, &end);
        if (end == ps->p) ps->error = 1;
        ps->p = end;
    }
}

static int parse_string_array(struct parser *ps, char **items, int max) {
    int n = 0;
    if (!expect(ps, '[')) return 0;
    skip_ws(ps);
    if (*ps->p == ']') { ps->p++; items[0] = NULL; return 0; }
    while (!ps->error) {
        char *s = parse_string(ps);
        if (!s || n >= max) { ps->error = 1; break; }
        items[n++] = s;
        skip_ws(ps);
        if (*ps->p == ',') { ps->p++; continue; }
        expect(ps, ']');
        break;
    }
    items[n] = NULL;
    return n;
}

static int parse_request(char *line, struct request *rq) {
    struct parser ps = {.p = line, .error = 0};
    memset(rq, 0, sizeof *rq);
    rq->cwd = "/";
    if (!expect(&ps, '{')) return -1;
    skip_ws(&ps);
    if (*ps.p == '}') return -1;
    while (!ps.error) {
        char *key = parse_string(&ps);
        if (!key || !expect(&ps, ':')) break;
        if (!strcmp(key, "type")) {
            char *s = parse_string(&ps);
            if (s) snprintf(rq->type, sizeof rq->type, "%s", s);
        } else if (!strcmp(key, "args")) {
            rq->nargs = parse_string_array(&ps, rq->args, MAX_ITEMS);
        } else if (!strcmp(key, "env")) {
            rq->nenv = parse_string_array(&ps, rq->env, MAX_ITEMS);
        } else if (!strcmp(key, "cwd")) {
            rq->cwd = parse_string(&ps);
        } else if (!strcmp(key, "hostname")) {
            rq->hostname = parse_string(&ps);
        } else if (!strcmp(key, "uid")) {
            rq->uid = parse_int(&ps);
        } else if (!strcmp(key, "gid")) {
            rq->gid = parse_int(&ps);
        } else if (!strcmp(key, "realtime_ns")) {
            rq->realtime_ns = parse_int(&ps);
        } else if (!strcmp(key, "id")) {
            long long id = parse_int(&ps);
            if (id < 0 || id > 0xFFFFFF) ps.error = 1;
            rq->id = (uint32_t)id;
        } else if (!strcmp(key, "signal")) {
            rq->signal = parse_int(&ps);
        } else if (!strcmp(key, "rows")) {
            rq->rows = parse_int(&ps);
        } else if (!strcmp(key, "cols")) {
            rq->cols = parse_int(&ps);
        } else if (!strcmp(key, "main")) {
            rq->main = parse_bool(&ps);
        } else if (!strcmp(key, "tty")) {
            rq->tty = parse_bool(&ps);
        } else if (!strcmp(key, "stdin")) {
            rq->with_stdin = parse_bool(&ps);
        } else if (!strcmp(key, "mounts")) {
            rq->nmounts = parse_string_array(&ps, rq->mounts, MAX_MOUNTS);
        } else if (!strcmp(key, "interfaces")) {
            rq->ninterfaces = parse_string_array(&ps, rq->interfaces, MAX_NET_ITEMS);
        } else if (!strcmp(key, "files")) {
            rq->nfiles = parse_string_array(&ps, rq->files, MAX_NET_ITEMS);
        } else if (!strcmp(key, "gids")) {
            if (!expect(&ps, '[')) break;
            skip_ws(&ps);
            if (*ps.p == ']') { ps.p++; }
            else while (!ps.error) {
                long long g = parse_int(&ps);
                if (rq->ngids < 256) rq->gids[rq->ngids++] = (gid_t)g;
                skip_ws(&ps);
                if (*ps.p == ',') { ps.p++; continue; }
                expect(&ps, ']');
                break;
            }
        } else {
            skip_value(&ps);
        }
        skip_ws(&ps);
        if (*ps.p == ',') { ps.p++; continue; }
        expect(&ps, '}');
        break;
    }
    return ps.error || !rq->cwd ? -1 : 0;
}

/* ---------- the root filesystem, mounted at the first request ---------- */

static int root_mounted = 0;

struct guest_mount {
    const char *source, *target, *fstype;
    unsigned long flags;
    const char *data;
};

static const char *write_guest_file(const char *root, char *spec);

/* Mounts the image's disk read-only under a tmpfs overlay, plus the usual API
 * filesystems inside it. The main process's files go straight into the overlay's
 * upper layer before it is mounted (no copy-up, no whiteout). Returns NULL, or the
 * step that failed (errno is set). */
static const char *mount_root(struct request *rq) {
    static const struct guest_mount steps[] = {
        {"hull-rw", "/mnt/rw", "tmpfs", 0, "mode=0755"},
        {"overlay", GUEST_ROOT, "overlay", 0,
         "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"},
        {"proc", GUEST_ROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL},
        {"sysfs", GUEST_ROOT "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL},
        {"devtmpfs", GUEST_ROOT "/dev", "devtmpfs", MS_NOSUID, NULL},
        {"devpts", GUEST_ROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
         "newinstance,ptmxmode=0666,mode=0620"},
        {"shm", GUEST_ROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, NULL},
        {"tmp", GUEST_ROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
        {"run", GUEST_ROOT "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"},
    };
    mkdir("/mnt/lower", 0755);
    mkdir("/mnt/rw", 0755);
    mkdir(GUEST_ROOT, 0755);
    int fd = -1;
    for (int attempt = 0; attempt < 400 && fd < 0; attempt++) {
        fd = open(ROOT_DEVICE, O_RDONLY | O_CLOEXEC);
        if (fd < 0) usleep(5000);
    }
    if (fd < 0) return "open the root disk " ROOT_DEVICE;
    /* Forget what was read from the device before: in a restored VM that was the
     * template's placeholder disk, not this image. */
    ioctl(fd, BLKFLSBUF, 0);
    close(fd);
    if (mount(ROOT_DEVICE, "/mnt/lower", "erofs", MS_RDONLY, NULL) < 0)
        return "mount the root disk";
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        const struct guest_mount *m = &steps[i];
        if (i == 1) {
            mkdir("/mnt/rw/upper", 0755);
            mkdir("/mnt/rw/work", 0755);
            for (int f = 0; rq->main && f < rq->nfiles; f++) {
                const char *failed = write_guest_file("/mnt/rw/upper", rq->files[f]);
                if (failed) return failed;
            }
        }
        if (i >= 2) mkdir(m->target, 0755); /* the image may lack it: goes to the upper layer */
        if (mount(m->source, m->target, m->fstype, m->flags, m->data) < 0) {
            static char what[128];
            snprintf(what, sizeof what, "mount %s", m->target);
            return what;
        }
    }
    root_mounted = 1;
    return NULL;
}

/* mkdir -p of path (absolute, in the agent's view). */
static int make_dirs(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
    return 0;
}

/* "TAG rw|ro /target": a virtiofs share mounted into the guest's root. Returns NULL or
 * what failed (errno set). */
static const char *mount_share(char *spec) {
    static char what[512];
    char *mode = strchr(spec, ' ');
    if (!mode) { errno = EINVAL; return "parse a mount"; }
    *mode++ = '\0';
    char *target = strchr(mode, ' ');
    if (!target || target[1] != '/') { errno = EINVAL; return "parse a mount"; }
    *target++ = '\0';
    char path[4096];
    snprintf(path, sizeof path, GUEST_ROOT "%s", target);
    snprintf(what, sizeof what, "mount the volume %s at %s", spec, target);
    if (make_dirs(path) < 0) return what;
    unsigned long flags = MS_NOSUID | MS_NODEV | (strcmp(mode, "ro") ? 0 : MS_RDONLY);
    if (mount(spec, path, "virtiofs", flags, NULL) < 0) return what;
    return NULL;
}

/* ---------- the guest's network and /etc files (the main process's request) ---------- */

static int if_flags(int sock, const char *ifname, int up) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) return -1;
    if (up) ifr.ifr_flags |= IFF_UP;
    else ifr.ifr_flags &= ~IFF_UP;
    return ioctl(sock, SIOCSIFFLAGS, &ifr);
}

static int parse_mac(const char *text, unsigned char mac[6]) {
    unsigned b[6];
    if (sscanf(text, "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
        return -1;
    for (int i = 0; i < 6; i++) mac[i] = (unsigned char)b[i];
    return 0;
}

static void set_inet(struct sockaddr *sa, struct in_addr address) {
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr = address};
    memcpy(sa, &sin, sizeof sin);
}

/* At boot, before the agent says it is ready (so a warm-start template has it done):
 * lo up (Docker's --network none has it too), and no IPv6 on eth0: Hull's networks
 * are IPv4, and a link-local address derived from a template's MAC would be every
 * restored VM's at once. */
static void prepare_network(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock >= 0) {
        if (if_flags(sock, "lo", 1) < 0) console("cannot bring lo up: %s", strerror(errno));
        close(sock);
    }
    int fd = open("/proc/sys/net/ipv6/conf/" GUEST_IFNAME "/disable_ipv6", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "1", 1) < 0) console("cannot disable IPv6 on " GUEST_IFNAME);
        close(fd);
    }
}

/* "IFNAME MAC ADDR/PREFIX GATEWAY|- MTU": the card's MAC (a restored card keeps its
 * template's otherwise), MTU, address, up, and the default route (lo is up already).
 * Returns NULL or the step that failed (errno set). */
static const char *configure_interface(char *spec) {
    static char what[160];
    char ifname[IFNAMSIZ], mac_text[32], cidr[48], gateway[48];
    int mtu = 0, prefix = 0;
    unsigned char mac[6];
    struct in_addr address, gw;
    errno = EINVAL;
    if (sscanf(spec, "%15s %31s %47s %47s %d", ifname, mac_text, cidr, gateway, &mtu) != 5)
        return "parse an interface";
    char *slash = strchr(cidr, '/');
    if (!slash || parse_mac(mac_text, mac) < 0) return "parse an interface";
    *slash = '\0';
    prefix = atoi(slash + 1);
    if (prefix < 0 || prefix > 32 || inet_pton(AF_INET, cidr, &address) != 1)
        return "parse an interface address";
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return "open a socket";
    struct ifreq ifr;
    const char *failed = NULL;
    snprintf(what, sizeof what, "set the MAC address of %s", ifname);
    if (if_flags(sock, ifname, 0) < 0) { failed = what; goto out; }
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    if (ioctl(sock, SIOCSIFHWADDR, &ifr) < 0) { failed = what; goto out; }
    snprintf(what, sizeof what, "set the MTU of %s", ifname);
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    ifr.ifr_mtu = mtu;
    if (mtu > 0 && ioctl(sock, SIOCSIFMTU, &ifr) < 0) { failed = what; goto out; }
    snprintf(what, sizeof what, "set the address of %s", ifname);
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    set_inet(&ifr.ifr_addr, address);
    if (ioctl(sock, SIOCSIFADDR, &ifr) < 0) { failed = what; goto out; }
    struct in_addr mask = {.s_addr = prefix ? htonl(~0u << (32 - prefix)) : 0};
    set_inet(&ifr.ifr_netmask, mask);
    if (ioctl(sock, SIOCSIFNETMASK, &ifr) < 0) { failed = what; goto out; }
    struct in_addr broadcast = {.s_addr = address.s_addr | ~mask.s_addr};
    set_inet(&ifr.ifr_broadaddr, broadcast);
    if (prefix < 31 && ioctl(sock, SIOCSIFBRDADDR, &ifr) < 0) { failed = what; goto out; }
    snprintf(what, sizeof what, "bring %s up", ifname);
    if (if_flags(sock, ifname, 1) < 0) { failed = what; goto out; }
    if (strcmp(gateway, "-")) {
        snprintf(what, sizeof what, "add the default route via %s", gateway);
        if (inet_pton(AF_INET, gateway, &gw) != 1) { errno = EINVAL; failed = what; goto out; }
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        struct in_addr any = {.s_addr = 0};
        set_inet(&rt.rt_dst, any);
        set_inet(&rt.rt_genmask, any);
        set_inet(&rt.rt_gateway, gw);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = ifname;
        if (ioctl(sock, SIOCADDRT, &rt) < 0 && errno != EEXIST) { failed = what; goto out; }
    }
out:;
    int saved = errno;
    close(sock);
    errno = saved;
    return failed;
}

/* "PATH\nCONTENT": a file of the guest's root, under root (the root itself, or the
 * upper layer before the root is mounted). A symlink there is replaced, as the
 * container's bind mount would hide it. Returns NULL or what failed (errno set). */
static const char *write_guest_file(const char *root, char *spec) {
    static char what[300];
    char *newline = strchr(spec, '\n');
    if (!newline || spec[0] != '/') { errno = EINVAL; return "parse a file"; }
    *newline = '\0';
    char path[4096];
    snprintf(path, sizeof path, "%s%s", root, spec);
    snprintf(what, sizeof what, "write %s", spec);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    if (make_dirs(path) < 0) return what;
    *slash = '/';
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return what;
    size_t len = strlen(newline + 1);
    ssize_t n = write(fd, newline + 1, len);
    int saved = errno;
    close(fd);
    if (n != (ssize_t)len) { errno = n < 0 ? saved : EIO; return what; }
    return NULL;
}

/* ---------- processes ---------- */

struct proc {
    int used, main, exited, status;
    uint32_t id;
    pid_t pid;
    int out_fd, err_fd, in_fd, master_fd; /* -1 once closed; a tty's master is out_fd too */
    char *in_buf;
    size_t in_len;
    int in_eof;
};

static struct proc procs[MAX_PROCS];

static struct proc *find_proc(uint32_t id) {
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].used && procs[i].id == id) return &procs[i];
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void set_nonblock(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int exit_code_for_errno(int err) {
    return err == ENOENT ? 127 : (err == EACCES || err == ENOEXEC || err == EPERM) ? 126 : 125;
}

/* In the child: enter the root, become the user, exec. Reports a failure as
 * (errno, step) on err_fd, which is close-on-exec so a successful exec says nothing. */
static void child_exec(struct request *rq, int in_r, int out_w, int err_w, const char *slave,
                       int err_fd) {
    const char *step = "open the terminal";
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    if (slave) {
        int tty = open(slave, O_RDWR);
        if (tty < 0) goto fail;
        ioctl(tty, TIOCSCTTY, 0);
        dup2(tty, 0);
        dup2(tty, 1);
        dup2(tty, 2);
        if (tty > 2) close(tty);
    } else {
        if (in_r < 0) in_r = open("/dev/null", O_RDWR);
        if (in_r >= 0) dup2(in_r, 0);
        dup2(out_w, 1);
        dup2(err_w, 2);
    }
    step = "chroot";
    if (chroot(GUEST_ROOT) < 0) goto fail;
    step = "chdir to the working directory";
    if (chdir(rq->cwd) < 0) goto fail;
    step = "set the groups";
    if (setgroups((size_t)rq->ngids, rq->gids) < 0) goto fail;
    step = "setgid";
    if (setgid((gid_t)rq->gid) < 0) goto fail;
    step = "setuid";
    if (setuid((uid_t)rq->uid) < 0) goto fail;
    step = "exec";
    extern char **environ;
    environ = rq->env;
    if (!getenv("PATH")) setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    execvp(rq->args[0], rq->args);
fail:;
    char msg[512];
    int err = errno;
    int n = snprintf(msg, sizeof msg, "%d %s", err, step);
    write_all(err_fd, msg, (size_t)n);
    _exit(127);
}

/* A new pty in the guest root's devpts: the master, and the slave's path in *slave. */
static int open_pty(char *slave, size_t cap, long long rows, long long cols) {
    int master = open(GUEST_ROOT "/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) return -1;
    int unlock = 0, n = -1;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &n) < 0) {
        close(master);
        return -1;
    }
    snprintf(slave, cap, GUEST_ROOT "/dev/pts/%d", n);
    if (rows > 0 && cols > 0) {
        struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
        ioctl(master, TIOCSWINSZ, &ws);
    }
    return master;
}

/* Forwards whatever fd has now; returns 0 at EOF (or on an error), 1 if more may come. */
static int pump(int fd, int stream, uint32_t id) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            send_frame(stream, id, buf, (size_t)n);
            continue;
        }
        if (n == 0) return 0;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? 1 : 0; /* EIO: a pty whose last slave closed */
    }
}

static void start_process(struct request *rq) {
    if (rq->id == 0 || find_proc(rq->id)) {
        send_control("error", rq->id, 125, "a process id must be new and not 0");
        return;
    }
    if (rq->nargs == 0) {
        send_control("error", rq->id, 125, "no command given");
        return;
    }
    struct proc *p = NULL;
    for (int i = 0; i < MAX_PROCS && !p; i++)
        if (!procs[i].used) p = &procs[i];
    if (!p) {
        send_control("error", rq->id, 125, "too many processes in this VM");
        return;
    }
    if (rq->realtime_ns > 0) {
        struct timespec ts = {.tv_sec = rq->realtime_ns / 1000000000LL,
                              .tv_nsec = rq->realtime_ns % 1000000000LL};
        clock_settime(CLOCK_REALTIME, &ts);
    }
    char msg[1024];
    int files_written = 0;
    if (!root_mounted) {
        const char *failed = mount_root(rq);
        files_written = 1;
        if (failed) {
            snprintf(msg, sizeof msg, "cannot %s: %s", failed, strerror(errno));
            send_control("error", rq->id, 125, msg);
            return;
        }
    }
    for (int i = 0; i < rq->nmounts; i++) {
        const char *failed = mount_share(rq->mounts[i]);
        if (failed) {
            snprintf(msg, sizeof msg, "cannot %s: %s", failed, strerror(errno));
            send_control("error", rq->id, 125, msg);
            return;
        }
    }
    for (int i = 0; rq->main && i < rq->ninterfaces; i++) {
        const char *failed = configure_interface(rq->interfaces[i]);
        if (failed) {
            snprintf(msg, sizeof msg, "cannot %s: %s", failed, strerror(errno));
            send_control("error", rq->id, 125, msg);
            return;
        }
    }
    for (int i = 0; rq->main && !files_written && i < rq->nfiles; i++) {
        const char *failed = write_guest_file(GUEST_ROOT, rq->files[i]);
        if (failed) {
            snprintf(msg, sizeof msg, "cannot %s: %s", failed, strerror(errno));
            send_control("error", rq->id, 125, msg);
            return;
        }
    }
    if (rq->hostname) sethostname(rq->hostname, strlen(rq->hostname));

    int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1}, status_pipe[2] = {-1, -1};
    int master = -1;
    char slave[128];
    int ok = pipe2(status_pipe, O_CLOEXEC) == 0;
    if (ok && rq->tty) {
        master = open_pty(slave, sizeof slave, rq->rows, rq->cols);
        ok = master >= 0;
    } else if (ok) {
        ok = pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0 &&
             (!rq->with_stdin || pipe2(in, O_CLOEXEC) == 0);
    }
    pid_t pid = ok ? fork() : -1;
    if (pid == 0) child_exec(rq, in[0], out[1], err[1], rq->tty ? slave : NULL, status_pipe[1]);
    int fork_errno = errno;
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&in[0]);
    close_fd(&status_pipe[1]);
    if (pid < 0) {
        close_fd(&out[0]);
        close_fd(&err[0]);
        close_fd(&in[1]);
        close_fd(&master);
        close_fd(&status_pipe[0]);
        snprintf(msg, sizeof msg, "cannot start the process: %s", strerror(fork_errno));
        send_control("error", rq->id, 125, msg);
        return;
    }
    char failure[512] = {0};
    ssize_t fn;
    while ((fn = read(status_pipe[0], failure, sizeof failure - 1)) < 0 && errno == EINTR) {
    }
    close_fd(&status_pipe[0]);
    if (fn > 0) {
        /* It never ran: reap it (its SIGCHLD finds no process entry) and say why. */
        close_fd(&out[0]);
        close_fd(&err[0]);
        close_fd(&in[1]);
        close_fd(&master);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        failure[fn] = '\0';
        int e = atoi(failure);
        const char *step = strchr(failure, ' ');
        snprintf(msg, sizeof msg, "%s %s: %s", step ? step + 1 : "start", rq->args[0], strerror(e));
        send_control("error", rq->id, exit_code_for_errno(e), msg);
        return;
    }
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->id = rq->id;
    p->pid = pid;
    p->main = rq->main;
    p->master_fd = master;
    p->out_fd = rq->tty ? master : out[0];
    p->err_fd = err[0];
    p->in_fd = rq->tty ? (rq->with_stdin ? master : -1) : in[1];
    p->in_eof = 0;
    if (p->out_fd >= 0) set_nonblock(p->out_fd);
    if (p->err_fd >= 0) set_nonblock(p->err_fd);
    if (p->in_fd >= 0) set_nonblock(p->in_fd);
    send_control("started", p->id, 0, NULL);
}

static void close_stdin(struct proc *p) {
    free(p->in_buf);
    p->in_buf = NULL;
    p->in_len = 0;
    if (p->in_fd >= 0 && p->in_fd != p->master_fd) close(p->in_fd);
    p->in_fd = -1;
}

/* Writes what stdin holds for p without blocking; the rest waits for POLLOUT. */
static void flush_stdin(struct proc *p) {
    while (p->in_len > 0 && p->in_fd >= 0) {
        ssize_t n = write(p->in_fd, p->in_buf, p->in_len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            close_stdin(p); /* the process closed its stdin */
            return;
        }
        memmove(p->in_buf, p->in_buf + n, p->in_len - (size_t)n);
        p->in_len -= (size_t)n;
    }
    if (p->in_len == 0 && p->in_eof && p->in_fd >= 0) {
        if (p->in_fd == p->master_fd) {
            write(p->in_fd, "\x04", 1); /* ^D: end of input on a terminal */
            p->in_fd = -1;
        } else {
            close_stdin(p);
        }
    }
}

static void take_stdin(uint32_t id, const char *data, size_t len) {
    struct proc *p = find_proc(id);
    if (!p || p->in_fd < 0) return;
    if (len == 0) {
        p->in_eof = 1;
    } else if (p->in_len + len <= STDIN_LIMIT) {
        char *grown = realloc(p->in_buf, p->in_len + len);
        if (!grown) return;
        p->in_buf = grown;
        memcpy(p->in_buf + p->in_len, data, len);
        p->in_len += len;
    }
    flush_stdin(p);
}

/* The process has ended: forward what its pipes still hold, report, forget it.
 * (A background child holding the pipes must not keep it open.) */
static void finish_process(struct proc *p) {
    if (p->out_fd >= 0) pump(p->out_fd, STREAM_STDOUT, p->id);
    if (p->err_fd >= 0) pump(p->err_fd, STREAM_STDERR, p->id);
    close_stdin(p);
    if (p->out_fd != p->master_fd) close_fd(&p->out_fd);
    close_fd(&p->err_fd);
    close_fd(&p->master_fd);
    int code = WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 128 + WTERMSIG(p->status);
    uint32_t id = p->id;
    memset(p, 0, sizeof *p);
    send_control("exit", id, code, NULL);
}

static void reap(void) {
    int st;
    pid_t got;
    while ((got = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_PROCS; i++) {
            if (procs[i].used && procs[i].pid == got) {
                procs[i].exited = 1;
                procs[i].status = st;
            }
        }
    }
}

/* The main process ended: end everything else in the guest, as a PID namespace does. */
static void end_everything(void) {
    kill(-1, SIGKILL); /* as PID 1: every other process in the guest */
    int st;
    pid_t got;
    while ((got = waitpid(-1, &st, 0)) > 0 || errno == EINTR) {
        for (int i = 0; got > 0 && i < MAX_PROCS; i++) {
            if (procs[i].used && procs[i].pid == got) {
                procs[i].exited = 1;
                procs[i].status = st;
            }
        }
    }
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].used) finish_process(&procs[i]);
}

static void signal_process(struct request *rq) {
    struct proc *p = find_proc(rq->id);
    if (p && !p->exited && rq->signal > 0 && rq->signal < 65) kill(p->pid, (int)rq->signal);
}

static void resize_process(struct request *rq) {
    struct proc *p = find_proc(rq->id);
    if (!p || p->master_fd < 0 || rq->rows <= 0 || rq->cols <= 0) return;
    struct winsize ws = {.ws_row = (unsigned short)rq->rows, .ws_col = (unsigned short)rq->cols};
    ioctl(p->master_fd, TIOCSWINSZ, &ws);
}

/* ---------- stats: the guest's figures for `hull stats` and `hull top` ---------- */

struct sbuf {
    char *data;
    size_t len, cap;
};

static int sb_reserve(struct sbuf *b, size_t more) {
    if (b->len + more + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) return -1;
    b->data = grown;
    b->cap = cap;
    return 0;
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0 || sb_reserve(b, (size_t)need) < 0) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)need;
}

static void sb_quote(struct sbuf *b, const char *s) {
    size_t need = strlen(s) * 6 + 8;
    if (sb_reserve(b, need) < 0) return;
    b->len += json_quote(b->data + b->len, need, s);
    b->data[b->len] = '\0';
}

/* A small file (under /proc or /sys) into buf, NUL-terminated; its length or -1. */
static ssize_t read_small(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fd, buf + used, cap - 1 - used);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += (size_t)n;
        if (used == cap - 1) break;
    }
    close(fd);
    buf[used] = '\0';
    return (ssize_t)used;
}

static long long field_after(const char *text, const char *key) {
    const char *at = strstr(text, key);
    return at ? strtoll(at + strlen(key), NULL, 10) : -1;
}

/* One process of the guest's table as [pid,ppid,uid,"S",cpu_ticks,start_ticks,tty,
 * rss_pages,"command"]; kernel threads and the agent itself are left out. */
static void append_process(struct sbuf *b, const char *pid_text, int *first) {
    char path[300], stat_text[1024], cmd[4096];
    snprintf(path, sizeof path, "/proc/%s/stat", pid_text);
    if (read_small(path, stat_text, sizeof stat_text) <= 0) return;
    char *open_paren = strchr(stat_text, '('), *close_paren = strrchr(stat_text, ')');
    if (!open_paren || !close_paren || close_paren[1] != ' ') return;
    *close_paren = '\0';
    char state = close_paren[2];
    /* Fields from 4 (ppid) on, after the state: see proc(5). */
    long long f[24] = {0};
    char *p = close_paren + 4;
    for (int i = 4; i <= 24 && *p; i++) {
        f[i - 1] = strtoll(p, &p, 10);
        while (*p == ' ') p++;
    }
    long long ppid = f[3], tty = f[6], flags = f[8], utime = f[13], stime = f[14];
    long long start = f[21], rss = f[23];
    if (flags & 0x00200000) return; /* PF_KTHREAD */
    struct stat st;
    snprintf(path, sizeof path, "/proc/%s", pid_text);
    if (stat(path, &st) < 0) return;
    snprintf(path, sizeof path, "/proc/%s/cmdline", pid_text);
    ssize_t n = read_small(path, cmd, sizeof cmd);
    if (n <= 0) {
        snprintf(cmd, sizeof cmd, "[%s]", open_paren + 1);
    } else {
        for (ssize_t i = 0; i < n; i++)
            if (cmd[i] == '\0') cmd[i] = ' ';
        while (n > 0 && cmd[n - 1] == ' ') cmd[--n] = '\0';
    }
    sb_printf(b, "%s[%s,%lld,%u,\"%c\",%lld,%lld,%lld,%lld,", *first ? "" : ",", pid_text, ppid,
              (unsigned)st.st_uid, state, utime + stime, start, tty, rss);
    sb_quote(b, cmd);
    sb_printf(b, "]");
    *first = 0;
}

static void send_stats(uint32_t id) {
    struct sbuf b = {0};
    static char text[16384];
    sb_printf(&b, "{\"type\":\"stats\",\"id\":%u,\"code\":0", id);
    if (read_small("/proc/meminfo", text, sizeof text) > 0)
        sb_printf(&b, ",\"mem_total_kb\":%lld,\"mem_available_kb\":%lld",
                  field_after(text, "MemTotal:"), field_after(text, "MemAvailable:"));
    if (read_small("/proc/stat", text, sizeof text) > 0) {
        unsigned long long v[8] = {0};
        sscanf(text, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]);
        int cpus = 0;
        for (const char *line = text; line; line = strchr(line, '\n')) {
            if (*line == '\n') line++;
            if (!strncmp(line, "cpu", 3) && line[3] >= '0' && line[3] <= '9') cpus++;
        }
        sb_printf(&b, ",\"cpu\":[%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu],\"cpus\":%d,\"btime\":%lld",
                  v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], cpus,
                  field_after(text, "\nbtime "));
    }
    if (read_small("/proc/uptime", text, sizeof text) > 0)
        sb_printf(&b, ",\"uptime_ms\":%lld", (long long)(strtod(text, NULL) * 1000));
    if (read_small("/sys/block/vda/stat", text, sizeof text) > 0) {
        unsigned long long v[7] = {0};
        sscanf(text, "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
               &v[5], &v[6]);
        sb_printf(&b, ",\"read_bytes\":%llu,\"write_bytes\":%llu", v[2] * 512, v[6] * 512);
    }
    sb_printf(&b, ",\"clk_tck\":%ld,\"page_size\":%ld,\"procs\":[", sysconf(_SC_CLK_TCK),
              sysconf(_SC_PAGESIZE));
    DIR *d = opendir("/proc");
    struct dirent *e;
    int first = 1;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || !strcmp(e->d_name, "1")) continue;
        append_process(&b, e->d_name, &first);
    }
    if (d) closedir(d);
    sb_printf(&b, "]}");
    if (b.data) send_frame(STREAM_CONTROL, id, b.data, b.len);
    else send_control("error", id, 125, "out of memory");
    free(b.data);
}

/* ---------- the port ---------- */

static int open_port(void) {
    /* The port's device node appears once virtio_console has probed it, and can
     * exist a little before it opens: retry for up to about 20 seconds. */
    for (int attempt = 0; attempt < 4000; attempt++) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char path[300], name[64] = {0};
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            ssize_t n = read(fd, name, sizeof name - 1);
            close(fd);
            if (n <= 0 || strncmp(name, PORT_NAME, strlen(PORT_NAME))) continue;
            snprintf(path, sizeof path, "/dev/%s", e->d_name);
            fd = open(path, O_RDWR | O_CLOEXEC);
            if (fd >= 0) {
                closedir(d);
                return fd;
            }
        }
        if (d) closedir(d);
        usleep(5000);
    }
    return -1;
}

static void power_off(void) {
    sync();
    reboot(RB_POWER_OFF);
    reboot(RB_AUTOBOOT); /* QEMU runs with -no-reboot: a reboot ends it too */
    for (;;) pause();
}

static void handle_request(char *json) {
    struct request rq;
    if (parse_request(json, &rq) < 0) {
        send_control("error", rq.id, 125, "malformed request");
    } else if (!strcmp(rq.type, "run")) {
        start_process(&rq);
    } else if (!strcmp(rq.type, "signal")) {
        signal_process(&rq);
    } else if (!strcmp(rq.type, "resize")) {
        resize_process(&rq);
    } else if (!strcmp(rq.type, "stats")) {
        send_stats(rq.id);
    } else if (!strcmp(rq.type, "poweroff")) {
        power_off();
    } else {
        send_control("error", rq.id, 125, "unknown request type");
    }
}

/* Whole frames from the host, taken off the front of buf; returns the bytes used. */
static size_t handle_frames(unsigned char *buf, size_t used) {
    static char payload[MAX_FRAME + 1];
    size_t off = 0;
    while (used - off >= 8) {
        unsigned char *h = buf + off;
        uint32_t id = ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
        uint32_t len = ((uint32_t)h[4] << 24) | ((uint32_t)h[5] << 16) | ((uint32_t)h[6] << 8) | h[7];
        if (len > MAX_FRAME) {
            console("dropping a garbled frame (%u bytes)", len);
            return used; /* nothing after it can be trusted */
        }
        if (used - off < 8 + (size_t)len) break;
        memcpy(payload, h + 8, len);
        payload[len] = '\0';
        off += 8 + (size_t)len;
        if (h[0] == STREAM_STDIN) take_stdin(id, payload, len);
        else if (h[0] == STREAM_CONTROL) handle_request(payload);
    }
    return off;
}

int main(void) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);

    port_fd = open_port();
    if (port_fd < 0) {
        console("no virtio port named %s", PORT_NAME);
        power_off();
    }
    prepare_network();
    send_control("ready", 0, 0, NULL);

    static unsigned char inbuf[MAX_FRAME + 8];
    size_t used = 0;
    int port_down = 0;
    struct pollfd pfds[2 + 3 * MAX_PROCS];
    struct proc *owner[2 + 3 * MAX_PROCS];
    for (;;) {
        int np = 0;
        pfds[np++] = (struct pollfd){.fd = port_down ? -1 : port_fd, .events = POLLIN};
        pfds[np++] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
        for (int i = 0; i < MAX_PROCS; i++) {
            struct proc *p = &procs[i];
            if (!p->used) continue;
            if (p->out_fd >= 0) {
                /* A tty's master is its output and its input at once. */
                short in = p->in_fd == p->out_fd && p->in_len > 0 ? POLLOUT : 0;
                owner[np] = p;
                pfds[np++] = (struct pollfd){.fd = p->out_fd, .events = (short)(POLLIN | in)};
            }
            if (p->err_fd >= 0) {
                owner[np] = p;
                pfds[np++] = (struct pollfd){.fd = p->err_fd, .events = POLLIN};
            }
            if (p->in_fd >= 0 && p->in_len > 0 && p->in_fd != p->out_fd) {
                owner[np] = p;
                pfds[np++] = (struct pollfd){.fd = p->in_fd, .events = POLLOUT};
            }
        }
        if (poll(pfds, (nfds_t)np, port_down ? 50 : -1) < 0) {
            if (errno != EINTR) usleep(10000);
            continue;
        }
        port_down = 0;
        if (pfds[0].revents) {
            ssize_t n = read(port_fd, inbuf + used, sizeof inbuf - used);
            if (n > 0) {
                used += (size_t)n;
                size_t done = handle_frames(inbuf, used);
                memmove(inbuf, inbuf + done, used - done);
                used -= done;
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                port_down = 1; /* host not connected yet (or gone): look again shortly */
            }
        }
        for (int k = 2; k < np; k++) {
            struct proc *p = owner[k];
            if (!pfds[k].revents || !p->used) continue;
            if (pfds[k].fd == p->out_fd) {
                if (pfds[k].revents & POLLOUT) flush_stdin(p);
                if ((pfds[k].revents & ~POLLOUT) && !pump(p->out_fd, STREAM_STDOUT, p->id)) {
                    if (p->out_fd != p->master_fd) close(p->out_fd);
                    p->out_fd = -1;
                }
            } else if (pfds[k].fd == p->err_fd) {
                if (!pump(p->err_fd, STREAM_STDERR, p->id)) close_fd(&p->err_fd);
            } else if (pfds[k].fd == p->in_fd) {
                flush_stdin(p);
            }
        }
        if (pfds[1].revents) {
            struct signalfd_siginfo si;
            while (read(sig_fd, &si, sizeof si) > 0) {
            }
            reap();
        }
        for (int i = 0; i < MAX_PROCS; i++) {
            if (!procs[i].used || !procs[i].exited) continue;
            if (procs[i].main) {
                struct proc main_proc = procs[i];
                memset(&procs[i], 0, sizeof procs[i]);
                end_everything();
                procs[i] = main_proc;
            }
            finish_process(&procs[i]);
        }
    }
}
