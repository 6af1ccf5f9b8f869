/*
 * hull-agent: Hull's guest agent, PID 1 of a Hull microVM after /init.
 *
 * /init (a busybox script in the initramfs) loads the virtio modules and execs this
 * program. The agent then owns the guest: it opens the virtio-serial port named
 * "hull.agent", says it is ready, and serves requests, one JSON object per line:
 *
 *   {"type":"run","args":[...],"env":["K=V",...],"cwd":"/","uid":0,"gid":0,
 *    "gids":[...],"hostname":"x","realtime_ns":N}
 *   {"type":"poweroff"}
 *
 * and answers with frames in Docker's stdcopy layout: one stream byte, three zero
 * bytes, a 4-byte big-endian length, then the payload. Stream 1 is the workload's
 * stdout, 2 its stderr, 3 a JSON control message from the agent:
 *   {"type":"ready"}                      once, when the port is open
 *   {"type":"exit","code":N}              the workload ended (128+sig if killed)
 *   {"type":"error","code":N,"message":"..."}  it could not start (126/127/125)
 *
 * The root disk (/dev/vda, the image's erofs) is mounted only when the first run
 * request comes, under a tmpfs-backed overlay at /mnt/root. That is what makes warm
 * start work: a VM saved while idle has not looked at its disk yet, so the host can
 * restore it with a different image's file behind the same device. The disk's
 * cached blocks (the kernel's partition scan read the template's placeholder) are
 * dropped before the mount.
 *
 * After a run the agent kills whatever the workload left behind and waits for the
 * next request, so a VM saved while idle can be restored and reused (warm start).
 *
 * Built statically (gcc -static -O2) by hull/vm/agent.py; no library beyond libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
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
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "hull.agent"
#define GUEST_ROOT "/mnt/root"
#define ROOT_DEVICE "/dev/vda"
#ifndef BLKFLSBUF
#define BLKFLSBUF _IO(0x12, 97)
#endif
#define MAX_LINE (1 << 20)
#define MAX_ITEMS 4096

enum { STREAM_STDOUT = 1, STREAM_STDERR = 2, STREAM_CONTROL = 3 };

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

static void send_frame(int stream, const void *data, size_t len) {
    unsigned char header[8] = {(unsigned char)stream, 0, 0, 0,
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

static void send_control(const char *type, int code, const char *message) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "{\"type\":\"%s\",\"code\":%d", type, code);
    if (message) {
        n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"message\":");
        n += (int)json_quote(buf + n, sizeof buf - (size_t)n - 2, message);
    }
    n += snprintf(buf + n, sizeof buf - (size_t)n, "}");
    send_frame(STREAM_CONTROL, buf, (size_t)n);
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
    char *args[MAX_ITEMS + 1];
    int nargs;
    char *env[MAX_ITEMS + 1];
    int nenv;
    char *cwd;
    char *hostname;
    long long uid, gid;
    gid_t gids[256];
    int ngids;
    long long realtime_ns;
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

/* Mounts the image's disk read-only under a tmpfs overlay, plus the usual API
 * filesystems inside it. Returns NULL, or the step that failed (errno is set). */
static const char *mount_root(void) {
    static const struct guest_mount steps[] = {
        {"hull-rw", "/mnt/rw", "tmpfs", 0, "mode=0755"},
        {"overlay", GUEST_ROOT, "overlay", 0,
         "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"},
        {"proc", GUEST_ROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL},
        {"sysfs", GUEST_ROOT "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL},
        {"devtmpfs", GUEST_ROOT "/dev", "devtmpfs", MS_NOSUID, NULL},
        {"devpts", GUEST_ROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
         "newinstance,ptmxmode=0666"},
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

/* ---------- running the workload ---------- */

static int exit_code_for_errno(int err) {
    return err == ENOENT ? 127 : (err == EACCES || err == ENOEXEC || err == EPERM) ? 126 : 125;
}

/* In the child: enter the root, become the user, exec. Reports a failure as
 * (errno, step) on err_fd, which is close-on-exec so a successful exec says nothing. */
static void child_exec(struct request *rq, int out_w, int err_w, int err_fd) {
    const char *step = "chroot";
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(out_w, 1);
    dup2(err_w, 2);
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

static void set_nonblock(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Forwards whatever fd has now; returns 0 at EOF. */
static int pump(int fd, int stream) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            send_frame(stream, buf, (size_t)n);
            continue;
        }
        if (n == 0) return 0;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? 1 : 0;
    }
}

static void reap_everything(void) {
    kill(-1, SIGKILL); /* as PID 1: every other process in the guest */
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
}

static void run(struct request *rq, int sig_fd) {
    if (rq->nargs == 0) {
        send_control("error", 125, "no command given");
        return;
    }
    if (rq->realtime_ns > 0) {
        struct timespec ts = {.tv_sec = rq->realtime_ns / 1000000000LL,
                              .tv_nsec = rq->realtime_ns % 1000000000LL};
        clock_settime(CLOCK_REALTIME, &ts);
    }
    if (!root_mounted) {
        const char *failed = mount_root();
        if (failed) {
            char msg[512];
            snprintf(msg, sizeof msg, "cannot %s: %s", failed, strerror(errno));
            send_control("error", 125, msg);
            return;
        }
    }
    if (rq->hostname) sethostname(rq->hostname, strlen(rq->hostname));
    int out[2], err[2], status_pipe[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
        pipe2(status_pipe, O_CLOEXEC) < 0) {
        send_control("error", 125, "pipe failed");
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        send_control("error", 125, strerror(errno));
        return;
    }
    if (pid == 0) child_exec(rq, out[1], err[1], status_pipe[1]);
    close(out[1]);
    close(err[1]);
    close(status_pipe[1]);

    char failure[512] = {0};
    ssize_t fn;
    while ((fn = read(status_pipe[0], failure, sizeof failure - 1)) < 0 && errno == EINTR) {
    }
    close(status_pipe[0]);

    set_nonblock(out[0]);
    set_nonblock(err[0]);
    int open_out = 1, open_err = 1, exited = 0, status = 0;
    while (!exited || open_out || open_err) {
        struct pollfd pfds[3] = {
            {.fd = open_out ? out[0] : -1, .events = POLLIN},
            {.fd = open_err ? err[0] : -1, .events = POLLIN},
            {.fd = exited ? -1 : sig_fd, .events = POLLIN},
        };
        if (poll(pfds, 3, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pfds[0].revents) open_out = pump(out[0], STREAM_STDOUT);
        if (pfds[1].revents) open_err = pump(err[0], STREAM_STDERR);
        if (pfds[2].revents) {
            struct signalfd_siginfo si;
            while (read(sig_fd, &si, sizeof si) > 0) {
            }
            int st;
            pid_t got;
            while ((got = waitpid(-1, &st, WNOHANG)) > 0) {
                if (got == pid) {
                    exited = 1;
                    status = st;
                }
            }
        }
        if (exited && (open_out || open_err)) {
            /* The workload is gone: forward what is buffered, then end the rest of it
             * (a background child holding the pipes must not keep the run open). */
            if (open_out) pump(out[0], STREAM_STDOUT);
            if (open_err) pump(err[0], STREAM_STDERR);
            open_out = open_err = 0;
        }
    }
    close(out[0]);
    close(err[0]);
    reap_everything();

    if (fn > 0) {
        failure[fn] = '\0';
        int e = atoi(failure);
        const char *step = strchr(failure, ' ');
        char msg[1024];
        snprintf(msg, sizeof msg, "%s %s: %s", step ? step + 1 : "start", rq->args[0], strerror(e));
        send_control("error", exit_code_for_errno(e), msg);
        return;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    send_control("exit", code, NULL);
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

int main(void) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);

    port_fd = open_port();
    if (port_fd < 0) {
        console("no virtio port named %s", PORT_NAME);
        power_off();
    }
    send_control("ready", 0, NULL);

    static char line[MAX_LINE + 1];
    size_t used = 0;
    for (;;) {
        char *nl = memchr(line, '\n', used);
        if (!nl) {
            if (used == MAX_LINE) used = 0; /* an overlong request: drop it */
            ssize_t n = read(port_fd, line + used, MAX_LINE - used);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                usleep(50000); /* host not connected yet (or gone): wait for it */
                continue;
            }
            used += (size_t)n;
            continue;
        }
        *nl = '\0';
        size_t consumed = (size_t)(nl - line) + 1;
        struct request rq;
        static char copy[MAX_LINE + 1];
        memcpy(copy, line, consumed);
        memmove(line, nl + 1, used - consumed);
        used -= consumed;
        if (parse_request(copy, &rq) < 0) {
            send_control("error", 125, "malformed request");
        } else if (!strcmp(rq.type, "run")) {
            run(&rq, sig_fd);
        } else if (!strcmp(rq.type, "poweroff")) {
            power_off();
        } else {
            send_control("error", 125, "unknown request type");
        }
    }
}
