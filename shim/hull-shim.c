/*
 * hull-shim: one small supervisor per container (Hull's conmon).
 *
 * Hull has no daemon, so something must outlive the `hull` process that started a
 * container: hold the container's stdio, write its log (Docker json-file, rotated),
 * relay its I/O to attach clients, reap it and record its exit code. This program
 * does that and nothing else, in plain C (musl or glibc) so that an idle container
 * costs three private pages rather than a Python interpreter (see "memory" below).
 *
 * Life: parse flags -> daemonize (fork, setsid, fork; subreaper) -> run
 * `<runtime> create` with pipes (or a console socket) as the container's stdio ->
 * report {"pid": N} or {"error": "..."} on the sync fd -> poll loop (output to log
 * and attach clients, client input to stdin) -> container exits -> drain, write the
 * exit file atomically, close clients -> exec --exit-command or exit.
 *
 * Build: musl-gcc -O2 -Wall -Wextra -std=gnu11 -static -o hull-shim hull-shim.c
 * (or gcc, static or not: it works the same, with more private pages).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h> /* rename() only: no stdio streams are used */
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define LINE_BUF 16384 /* Docker's copier buffer: a longer line is logged in parts */
#define OUT_BUF 4096   /* log writer buffer */
#define STDIN_BUF 4095 /* client input not yet written to the container's stdin (+1: EOF) */
#define ERR_BUF 4096   /* the runtime's stderr during create */
#define PAGE 4096
#define ARENA 1024 /* strings and arrays kept for the shim's lifetime */
#define STACK_RELEASE (256 << 10) /* stack below the idle loop handed back at start */
#define IDLE_RELEASE_MS 5000      /* after activity, quiet this long: hand buffers back */
#define DRAIN_LIMIT (8 << 20) /* bytes read per stream after exit, in case of a writer that never stops */
#define CLIENT_BACKLOG (4 << 20) /* output an attach client may fall behind before it is dropped */
#define EXIT_FLUSH_MS 2000       /* time clients get to take their backlog after the exit */

static const char USAGE[] =
    "usage: hull-shim --id ID --bundle DIR --runtime PATH [--runtime-arg ARG]...\n"
    "                 --runtime-root DIR --log-path FILE [--log-max-size BYTES]\n"
    "                 [--log-max-files N] --exit-file FILE --socket-dir DIR [--tty] [--stdin]\n"
    "                 [--sync-fd N] [--exit-command PATH [--exit-command-arg ARG]...]\n"
    "\n"
    "Supervise one OCI container: runs `RUNTIME [ARG...] --root DIR create --bundle DIR\n"
    "--pid-file SOCKET-DIR/container.pid ID`, logs its output in Docker's json-file\n"
    "format, serves SOCKET-DIR/attach.sock and writes the exit code to --exit-file.\n"
    "\n"
    "  --id ID               container id given to the runtime\n"
    "  --bundle DIR          OCI bundle (config.json)\n"
    "  --runtime PATH        OCI runtime (hull-runtime, runc, crun)\n"
    "  --runtime-arg ARG     extra argument before the runtime's global flags (repeatable)\n"
    "  --runtime-root DIR    the runtime's --root\n"
    "  --log-path FILE       json-file log; one {\"log\",\"stream\",\"time\"} object per line\n"
    "  --log-max-size BYTES  rotate when the log would grow beyond this (k, m, g suffixes)\n"
    "  --log-max-files N     files kept, the live one included (default 1: truncate)\n"
    "  --exit-file FILE      \"<code>\\n\" (128+N for signal N) or \"error <message>\\n\"\n"
    "  --socket-dir DIR      attach.sock, shim.pid, container.pid (created if missing)\n"
    "  --tty                 the container has a terminal: receive its pty master\n"
    "  --stdin               keep the container's stdin open for attach clients\n"
    "  --sync-fd N           write {\"pid\": N} or {\"error\": \"...\"} here once created\n"
    "  --exit-command PATH   exec this (with its args, stdio /dev/null) after the exit\n"
    "  --exit-command-arg A  an argument for --exit-command (repeatable)\n"
    "\n"
    "Attach protocol: frames of [stream, 0, 0, 0, len32 big-endian] + payload. Output\n"
    "streams 1 (stdout) and 2 (stderr); input stream 0 (stdin; empty = EOF) and 3\n"
    "(resize: rows, cols as big-endian uint16).\n";

/* ---- options ---------------------------------------------------------------------- */

static struct {
    const char *id, *bundle, *runtime, *runtime_root, *log_path, *exit_file, *socket_dir;
    const char *exit_command;
    char **runtime_args;
    int n_runtime_args;
    char **exit_args;
    int n_exit_args;
    long long log_max_size;
    int log_max_files;
    int tty, with_stdin;
    int sync_fd;
} opt = {.log_max_files = 1, .sync_fd = -1};

/* ---- memory ----------------------------------------------------------------------- *
 * One shim runs per container, so its private pages are multiplied by the number of
 * containers. Built static with musl, an idle shim has three: one of small state
 * (.data and .bss, the arena below included) and two at the top of its stack (argv,
 * environment, main's frame). No heap (no malloc unless an attach needs it), and the
 * vDSO is never touched (clock_now): no page tables for those areas either.
 * The big buffers are in .lbss, which the linker places after .bss on pages of their
 * own; they are handed back to the kernel once the container is up, with the stack
 * that start-up used, and again after output stops (release_idle_memory). */

/* Busy only while data flows; all empty when the idle loop begins. */
static struct idle_buffers {
    char line[2][LINE_BUF];            /* per stream: output not yet a whole line */
    char log[OUT_BUF];                 /* log writer */
    char stdin_pending[STDIN_BUF + 1]; /* client input not yet taken by the container */
    char input[STDIN_BUF + 1];         /* a client's frames as read, STDIN_BUF at a time */
    char err[ERR_BUF];                 /* the runtime's stderr during create */
    char cwd[PAGE];                    /* for relative paths in the flags */
} bufs __attribute__((section(".lbss"), aligned(PAGE))); /* after .bss: see above */
_Static_assert(sizeof bufs % PAGE == 0, "idle buffers must fill whole pages");

/* Long-lived strings and arrays, carved from one static arena (malloc past it). */
static char arena[ARENA] __attribute__((aligned(16)));
static size_t arena_used;

static void *keep(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n <= ARENA - arena_used) {
        void *p = arena + arena_used;
        arena_used += n;
        return p;
    }
    void *p = calloc(1, n);
    if (!p)
        abort();
    return p;
}

/* ---- small helpers ---------------------------------------------------------------- */

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += r;
        n -= (size_t)r;
    }
}

/* dir/name into out, which has room for strlen(dir) + strlen(name) + 2 bytes. */
static char *join_path(char *out, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, name, b + 1);
    return out;
}

#define PATH_ROOM(dir, name) (strlen(dir) + strlen(name) + 2)

/* dir/name, kept for the shim's lifetime. */
static char *path_in(const char *dir, const char *name)
{
    return join_path(keep(PATH_ROOM(dir, name)), dir, name);
}

/* Paths are used after chdir("/"): make relative ones absolute first. */
static const char *absolute(const char *path)
{
    if (!path || path[0] == '/')
        return path;
    if (!bufs.cwd[0] && !getcwd(bufs.cwd, sizeof bufs.cwd))
        return path;
    return path_in(bufs.cwd, path);
}

/* No stdio: printf and friends (and strerror's gettext) would make up most of the
 * pages a static shim touches. Messages are lists of strings ending with END. */
#define END ((const char *)NULL)
#define NUM(v) num((long long)(v), (char[24]){0})

static const char *num(long long v, char *buf)
{
    char tmp[24];
    int i = 0, n = 0;
    unsigned long long u = v < 0 ? -(unsigned long long)v : (unsigned long long)v;
    do
        tmp[i++] = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        buf[n++] = '-';
    while (i)
        buf[n++] = tmp[--i];
    buf[n] = 0;
    return buf;
}

static const char *err_text(int err)
{
#ifdef __GLIBC__
    const char *s = strerrordesc_np(err); /* strerror would pull in glibc's locale code */
    return s ? s : "unknown error";
#else
    return strerror(err); /* musl: a plain table */
#endif
}

static size_t vjoin(char *out, size_t cap, const char *first, va_list ap)
{
    size_t n = 0;
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        size_t k = strlen(s);
        if (k > cap - 1 - n)
            k = cap - 1 - n;
        memcpy(out + n, s, k);
        n += k;
    }
    out[n] = 0;
    return n;
}

/* The shim's own errors, to <socket-dir>/shim.log (stderr is /dev/null once daemonized). */
static void shim_log(const char *first, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, first);
    size_t n = vjoin(msg, sizeof msg - 1, first, ap);
    va_end(ap);
    msg[n++] = '\n';
    if (!opt.socket_dir) {
        write_all(2, msg, n);
        return;
    }
    char path[PATH_ROOM(opt.socket_dir, "shim.log")];
    int fd = open(join_path(path, opt.socket_dir, "shim.log"),
                  O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        write_all(fd, msg, n);
        close(fd);
    }
}

/* ---- buffered writer with a byte counter (fd < 0: count only) --------------------- */

struct writer {
    int fd;
    size_t len, total;
    char *buf;
    size_t cap;
};

static void w_flush(struct writer *w)
{
    if (w->fd >= 0 && w->len)
        write_all(w->fd, w->buf, w->len);
    w->len = 0;
}

static void w_put(struct writer *w, const char *p, size_t n)
{
    w->total += n;
    if (w->fd < 0)
        return;
    while (n > 0) {
        size_t k = w->cap - w->len;
        if (k > n)
            k = n;
        memcpy(w->buf + w->len, p, k);
        w->len += k;
        p += k;
        n -= k;
        if (w->len == w->cap)
            w_flush(w);
    }
}

static void w_str(struct writer *w, const char *s) { w_put(w, s, strlen(s)); }

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes are not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* A JSON string body: quotes, backslash and control characters escaped, valid UTF-8
 * passed through, each invalid byte as U+FFFD. */
static void w_json(struct writer *w, const unsigned char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* start of bytes that need no escaping */
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        const char *esc = NULL;
        char u[7];
        size_t skip = 1;
        if (c >= 0x80) {
            size_t len = utf8_len(s + i, n - i);
            if (len) {
                i += len;
                continue;
            }
            esc = "\\ufffd";
        } else if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            memcpy(u, "\\u00", 4);
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
            u[6] = 0;
            esc = u;
        } else {
            i++;
            continue;
        }
        w_put(w, (const char *)s + run, i - run);
        w_str(w, esc);
        i += skip;
        run = i;
    }
    w_put(w, (const char *)s + run, n - run);
}

/* Year, month, day of a day count since 1970-01-01 (H. Hinnant's algorithm): gmtime
 * would initialise the time zone machinery (and read /etc/localtime) for nothing. */
static void civil_from_days(long long days, long long *y, unsigned *m, unsigned *d)
{
    days += 719468;
    long long era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned doe = (unsigned)(days - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long long)yoe + era * 400 + (*m <= 2);
}

static char *put_digits(char *out, unsigned long long v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return out + width;
}

/* RFC 3339 with nanoseconds as Go's time.RFC3339Nano prints it (trailing zeros cut). */
static size_t format_time(char *out, const struct timespec *ts)
{
    long long secs = ts->tv_sec, days = secs / 86400, rem = secs % 86400;
    if (rem < 0)
        rem += 86400, days--;
    long long y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    char *p = put_digits(out, (unsigned long long)y, 4);
    *p++ = '-';
    p = put_digits(p, m, 2);
    *p++ = '-';
    p = put_digits(p, d, 2);
    *p++ = 'T';
    p = put_digits(p, (unsigned long long)(rem / 3600), 2);
    *p++ = ':';
    p = put_digits(p, (unsigned long long)(rem / 60 % 60), 2);
    *p++ = ':';
    p = put_digits(p, (unsigned long long)(rem % 60), 2);
    if (ts->tv_nsec) {
        *p++ = '.';
        char *frac = p;
        p = put_digits(p, (unsigned long long)ts->tv_nsec, 9);
        while (p > frac + 1 && p[-1] == '0')
            p--;
    }
    *p++ = 'Z';
    *p = 0;
    return (size_t)(p - out);
}

/* ---- the json-file log ------------------------------------------------------------ */

static int log_fd = -1;
static long long log_size;

static int open_log(int truncate)
{
    int flags = O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0);
    log_fd = open(opt.log_path, flags, 0640);
    if (log_fd < 0)
        return -1;
    struct stat st;
    log_size = fstat(log_fd, &st) == 0 ? (long long)st.st_size : 0;
    return 0;
}

/* Docker's json-file rotation: log.N-2 -> log.N-1 ... log -> log.1; a fresh log. */
static void rotate_log(void)
{
    close(log_fd);
    log_fd = -1;
    if (opt.log_max_files >= 2) {
        size_t len = strlen(opt.log_path);
        char from[len + 24], to[len + 24];
        memcpy(from, opt.log_path, len);
        memcpy(to, opt.log_path, len);
        from[len] = to[len] = '.';
        for (int i = opt.log_max_files - 1; i >= 1; i--) {
            if (i == 1)
                strcpy(from, opt.log_path);
            else
                num(i - 1, from + len + 1);
            num(i, to + len + 1);
            if (rename(from, to) < 0 && errno != ENOENT)
                shim_log("rotate ", from, ": ", err_text(errno), END);
        }
    }
    if (open_log(1) < 0)
        shim_log("reopen ", opt.log_path, " after rotation: ", err_text(errno), END);
}

static void log_entry_body(struct writer *w, const char *stream, const char *data, size_t n,
                           const char *time)
{
    w_str(w, "{\"log\":\"");
    w_json(w, (const unsigned char *)data, n);
    w_str(w, "\",\"stream\":\"");
    w_str(w, stream);
    w_str(w, "\",\"time\":\"");
    w_str(w, time);
    w_str(w, "\"}\n");
}

static void log_entry(const char *stream, const char *data, size_t n, const char *time)
{
    if (log_fd < 0 || n == 0)
        return;
    if (opt.log_max_size > 0 && log_size > 0) {
        struct writer count = {.fd = -1};
        log_entry_body(&count, stream, data, n, time);
        if (log_size + (long long)count.total > opt.log_max_size) {
            rotate_log();
            if (log_fd < 0)
                return;
        }
    }
    struct writer w = {.fd = log_fd, .buf = bufs.log, .cap = sizeof bufs.log};
    log_entry_body(&w, stream, data, n, time);
    w_flush(&w);
    log_size += (long long)w.total;
}

/* clock_gettime without the vDSO: a syscall per call, but an idle shim then never
 * faults the vDSO in, and has no page tables for that corner of its address space. */
static void clock_now(clockid_t clock, struct timespec *ts)
{
    syscall(SYS_clock_gettime, clock, ts);
}

/* ---- attach clients --------------------------------------------------------------- */

struct client {
    int fd;
    uint8_t hdr[8];
    uint8_t hdr_len;
    uint8_t stream;
    uint32_t remaining;
    uint8_t resize[4];
    uint8_t resize_len;
    uint8_t input_closed; /* the client shut down its sending side: still gets output */
    char *backlog; /* output the socket would not take yet; mapped only while needed */
    size_t backlog_head, backlog_len;
};

static struct client *clients;
static int n_clients, cap_clients;

static void free_backlog(struct client *c)
{
    if (c->backlog)
        munmap(c->backlog, CLIENT_BACKLOG);
    c->backlog = NULL;
    c->backlog_head = c->backlog_len = 0;
}

static void drop_client(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free_backlog(c);
}

static void compact_clients(void)
{
    int j = 0;
    for (int i = 0; i < n_clients; i++)
        if (clients[i].fd >= 0)
            clients[j++] = clients[i];
    n_clients = j;
}

static void add_client(int fd)
{
    if (n_clients == cap_clients) {
        int cap = cap_clients ? cap_clients * 2 : 4;
        struct client *more = realloc(clients, (size_t)cap * sizeof *clients);
        if (!more) {
            close(fd);
            return;
        }
        clients = more;
        cap_clients = cap;
    }
    memset(&clients[n_clients], 0, sizeof *clients);
    clients[n_clients++].fd = fd;
}

/* Queue bytes behind what the client has not taken; 0 if its backlog is full. */
static int backlog_append(struct client *c, const void *p, size_t n)
{
    if (!c->backlog) {
        void *m = mmap(NULL, CLIENT_BACKLOG, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED)
            return 0;
        c->backlog = m;
    }
    if (c->backlog_len + n > CLIENT_BACKLOG && c->backlog_head) {
        c->backlog_len -= c->backlog_head;
        memmove(c->backlog, c->backlog + c->backlog_head, c->backlog_len);
        c->backlog_head = 0;
    }
    if (c->backlog_len + n > CLIENT_BACKLOG)
        return 0;
    memcpy(c->backlog + c->backlog_len, p, n);
    c->backlog_len += n;
    return 1;
}

/* Send what the client's backlog holds; its pages go back once it is empty. */
static void flush_backlog(struct client *c)
{
    while (c->backlog && c->backlog_head < c->backlog_len) {
        ssize_t r = send(c->fd, c->backlog + c->backlog_head, c->backlog_len - c->backlog_head,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            drop_client(c);
            return;
        }
        c->backlog_head += (size_t)r;
    }
    free_backlog(c);
}

/* One frame to every client. A client whose socket is full gets a backlog; one that
 * falls more than CLIENT_BACKLOG behind is dropped: a slow or dead reader never
 * holds up the container. */
static void accept_clients(void);

static void broadcast(int stream, const char *data, size_t n)
{
    /* A client that connected before this output must see it, even when poll
     * reported the output before the pending connection: accept first. */
    accept_clients();
    uint8_t hdr[8] = {(uint8_t)stream, 0, 0, 0, (uint8_t)(n >> 24), (uint8_t)(n >> 16),
                      (uint8_t)(n >> 8), (uint8_t)n};
    struct iovec iov[2] = {{hdr, 8}, {(void *)data, n}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    for (int i = 0; i < n_clients; i++) {
        struct client *c = &clients[i];
        if (c->fd < 0)
            continue; /* dropped this round; compacted at the end of the loop */
        size_t sent = 0;
        if (!c->backlog) {
            ssize_t r;
            do
                r = sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
            while (r < 0 && errno == EINTR);
            if (r == (ssize_t)(n + 8))
                continue;
            if (r < 0 && errno != EAGAIN) {
                drop_client(c);
                continue;
            }
            sent = r < 0 ? 0 : (size_t)r;
        }
        int ok = 1;
        if (sent < 8)
            ok = backlog_append(c, hdr + sent, 8 - sent);
        if (ok)
            ok = backlog_append(c, data + (sent > 8 ? sent - 8 : 0), n - (sent > 8 ? sent - 8 : 0));
        if (!ok)
            drop_client(c);
    }
}

/* The container is gone: give clients a little time to take their backlogs. */
static void flush_backlogs_before_exit(void)
{
    struct timespec start, now;
    clock_now(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct pollfd p[64];
        int np = 0;
        for (int i = 0; i < n_clients && np < 64; i++)
            if (clients[i].fd >= 0 && clients[i].backlog)
                p[np++] = (struct pollfd){clients[i].fd, POLLOUT, 0};
        clock_now(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (np == 0 || elapsed >= EXIT_FLUSH_MS)
            return;
        if (poll(p, (nfds_t)np, (int)(EXIT_FLUSH_MS - elapsed)) <= 0)
            continue;
        for (int i = 0; i < n_clients; i++)
            if (clients[i].fd >= 0 && clients[i].backlog)
                flush_backlog(&clients[i]);
    }
}

/* ---- container I/O ---------------------------------------------------------------- */

struct stream {
    int fd;
    int id; /* attach stream: 1 stdout, 2 stderr */
    const char *name;
    size_t used;
    char *buf; /* LINE_BUF bytes in bufs.line */
};

static struct stream streams[2]; /* set up by init_streams() */
static int stdin_fd = -1;  /* pipe write end, or the pty master */
static int master_fd = -1; /* --tty: for resize */
static size_t stdin_len;
static int stdin_close_requested;

static void init_streams(void)
{
    streams[0].fd = streams[1].fd = -1;
    streams[0].id = 1;
    streams[0].name = "stdout";
    streams[1].id = 2;
    streams[1].name = "stderr";
    streams[0].buf = bufs.line[0];
    streams[1].buf = bufs.line[1];
}

static void now_string(char *out)
{
    struct timespec ts;
    clock_now(CLOCK_REALTIME, &ts);
    format_time(out, &ts);
}

static void flush_partial(struct stream *s)
{
    if (s->used) {
        char time[48];
        now_string(time);
        log_entry(s->name, s->buf, s->used, time);
        s->used = 0;
    }
}

static void close_stream(struct stream *s)
{
    flush_partial(s);
    if (s->fd >= 0 && s->fd != master_fd)
        close(s->fd);
    s->fd = -1;
}

/* Read once: frames to clients, whole lines to the log. Returns bytes read, 0 when
 * nothing is there now, -1 at end of stream (EOF, or EIO from a pty whose slave is gone). */
static ssize_t read_stream(struct stream *s)
{
    ssize_t r;
    do
        r = read(s->fd, s->buf + s->used, LINE_BUF - s->used);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN)
        return 0;
    if (r <= 0) {
        close_stream(s);
        return -1;
    }
    broadcast(s->id, s->buf + s->used, (size_t)r);
    char time[48];
    now_string(time);
    size_t start = 0, end = s->used + (size_t)r;
    for (size_t i = s->used; i < end; i++) {
        if (s->buf[i] == '\n') {
            log_entry(s->name, s->buf + start, i + 1 - start, time);
            start = i + 1;
        }
    }
    if (start == 0 && end == LINE_BUF) {
        log_entry(s->name, s->buf, end, time); /* a full buffer without newline */
        start = end;
    }
    s->used = end - start;
    if (s->used && start)
        memmove(s->buf, s->buf + start, s->used);
    return r;
}

static void drain_stream(struct stream *s)
{
    size_t total = 0;
    while (s->fd >= 0 && total < DRAIN_LIMIT) {
        ssize_t r = read_stream(s);
        if (r <= 0)
            break;
        total += (size_t)r;
    }
    close_stream(s);
}

static void close_stdin(void)
{
    if (stdin_fd >= 0 && stdin_fd != master_fd)
        close(stdin_fd);
    stdin_fd = -1;
    stdin_len = 0;
    stdin_close_requested = 0;
}

static void flush_stdin(void)
{
    while (stdin_fd >= 0 && stdin_len > 0) {
        ssize_t r = write(stdin_fd, bufs.stdin_pending, stdin_len);
        if (r > 0) {
            stdin_len -= (size_t)r;
            memmove(bufs.stdin_pending, bufs.stdin_pending + r, stdin_len);
        } else if (r < 0 && errno == EINTR)
            continue;
        else if (r < 0 && errno == EAGAIN)
            return;
        else {
            close_stdin(); /* EPIPE: nobody reads the container's stdin any more */
            return;
        }
    }
    if (stdin_close_requested && stdin_len == 0)
        close_stdin();
}

static void request_stdin_close(void)
{
    if (stdin_fd < 0)
        return;
    if (opt.tty) {
        /* A pty has no half-close: send the terminal's EOF character instead. */
        struct termios t;
        cc_t eof = 4;
        if (tcgetattr(master_fd, &t) == 0 && t.c_cc[VEOF])
            eof = t.c_cc[VEOF];
        bufs.stdin_pending[stdin_len++] = (char)eof;
    } else
        stdin_close_requested = 1;
}

static void resize(const uint8_t *p)
{
    if (master_fd < 0)
        return;
    struct winsize ws = {.ws_row = (unsigned short)(p[0] << 8 | p[1]),
                         .ws_col = (unsigned short)(p[2] << 8 | p[3])};
    ioctl(master_fd, TIOCSWINSZ, &ws);
}

/* Frames from a client: [stream, 0, 0, 0, len32] + payload. Only read while no
 * earlier stdin is pending, so everything read here fits in stdin_pending. */
static void client_input(struct client *c)
{
    uint8_t *buf = (uint8_t *)bufs.input;
    ssize_t r;
    do
        r = read(c->fd, buf, STDIN_BUF);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN)
        return;
    if (r == 0) {
        c->input_closed = 1;
        return;
    }
    if (r < 0) {
        drop_client(c);
        return;
    }
    size_t i = 0, n = (size_t)r;
    while (i < n) {
        if (c->hdr_len < 8) {
            c->hdr[c->hdr_len++] = buf[i++];
            if (c->hdr_len < 8)
                continue;
            c->stream = c->hdr[0];
            c->remaining = (uint32_t)c->hdr[4] << 24 | (uint32_t)c->hdr[5] << 16 |
                           (uint32_t)c->hdr[6] << 8 | c->hdr[7];
            c->resize_len = 0;
            if (c->remaining == 0) {
                if (c->stream == 0)
                    request_stdin_close();
                c->hdr_len = 0;
            }
            continue;
        }
        size_t k = n - i < c->remaining ? n - i : c->remaining;
        if (c->stream == 0 && stdin_fd >= 0 && !stdin_close_requested) {
            memcpy(bufs.stdin_pending + stdin_len, buf + i, k);
            stdin_len += k;
        } else if (c->stream == 3) {
            for (size_t j = 0; j < k && c->resize_len < 4; j++)
                c->resize[c->resize_len++] = buf[i + j];
        }
        i += k;
        c->remaining -= (uint32_t)k;
        if (c->remaining == 0) {
            if (c->stream == 3 && c->resize_len == 4)
                resize(c->resize);
            c->hdr_len = 0;
        }
    }
    flush_stdin();
}

/* ---- files written for the engine ------------------------------------------------- */

static void write_file_atomic(const char *path, const char *data, size_t n, int sync)
{
    size_t len = strlen(path);
    char tmp[len + 5];
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        shim_log("write ", tmp, ": ", err_text(errno), END);
        return;
    }
    write_all(fd, data, n);
    if (sync)
        fsync(fd);
    close(fd);
    if (rename(tmp, path) < 0)
        shim_log("rename ", tmp, ": ", err_text(errno), END);
}

static void write_exit_code(int code)
{
    char buf[24];
    size_t n = strlen(num(code, buf));
    buf[n++] = '\n';
    write_file_atomic(opt.exit_file, buf, n, 0); /* runroot is volatile: rename suffices */
}

/* Cut trailing newlines and spaces (in place); returns the new length. */
static size_t trim(char *s, size_t n)
{
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        n--;
    s[n] = 0;
    return n;
}

static char *sock_path, *console_path, *pid_path, *container_pid_path;
static int listen_fd = -1, console_fd = -1;

/* The one sync message. On success the fd is closed at once; on error it stays open
 * until exit, so that the caller's EOF means the shim is gone. */
static void report_to_sync(const char *key, const char *value, size_t n, long pid)
{
    if (opt.sync_fd < 0)
        return;
    char buf[512];
    struct writer w = {.fd = opt.sync_fd, .buf = buf, .cap = sizeof buf};
    if (key[0] == 'p') {
        w_str(&w, "{\"pid\": ");
        w_str(&w, NUM(pid));
        if (n) {
            w_str(&w, ", \"warning\": \"");
            w_json(&w, (const unsigned char *)value, n);
            w_str(&w, "\"");
        }
        w_str(&w, "}\n");
    } else {
        w_str(&w, "{\"error\": \"");
        w_json(&w, (const unsigned char *)value, n);
        w_str(&w, "\"}\n");
    }
    w_flush(&w);
    if (key[0] == 'p') {
        close(opt.sync_fd);
        opt.sync_fd = -1;
    }
}

/* Creation failed: tell the caller and the exit file, remove what we made, exit 1. */
static void fail(const char *first, ...)
{
    char msg[ERR_BUF + 256];
    va_list ap;
    va_start(ap, first);
    size_t len = trim(msg, vjoin(msg, sizeof msg, first, ap));
    va_end(ap);
    if (sock_path)
        unlink(sock_path);
    if (console_path)
        unlink(console_path);
    if (container_pid_path)
        unlink(container_pid_path);
    if (pid_path)
        unlink(pid_path);
    /* The exit file holds one line: newlines in the message become spaces. */
    char line[ERR_BUF + 256 + 8];
    memcpy(line, "error ", 6);
    for (size_t i = 0; i < len; i++)
        line[6 + i] = msg[i] == '\n' ? ' ' : msg[i];
    line[6 + len] = '\n';
    if (opt.exit_file)
        write_file_atomic(opt.exit_file, line, len + 7, 0);
    shim_log(msg, END);
    report_to_sync("error", msg, len, 0);
    exit(1);
}

/* ---- start-up --------------------------------------------------------------------- */

static void usage_error(const char *first, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, first);
    size_t n = vjoin(msg, sizeof msg, first, ap);
    va_end(ap);
    write_all(2, "hull-shim: ", 11);
    write_all(2, msg, n);
    write_all(2, " (see hull-shim --help)\n", 24);
    if (opt.sync_fd >= 0)
        report_to_sync("error", msg, n, 0);
    exit(2);
}

static long long parse_size(const char *s, const char *flag)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    long long mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1024, end++;
    else if (*end == 'm' || *end == 'M')
        mult = 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G')
        mult = 1024LL * 1024 * 1024, end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (errno || end == s || *end || v < 0)
        usage_error(flag, " wants a size, not ", s, END);
    return v * mult;
}


static void parse_args(int argc, char **argv)
{
    /* The sync fd first, so that flag errors can be reported on it too; and how many
     * repeated flags there are, to size their arrays. */
    int n_runtime_args = 0, n_exit_args = 0;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--sync-fd"))
            opt.sync_fd = atoi(argv[i + 1]);
        n_runtime_args += !strcmp(argv[i], "--runtime-arg");
        n_exit_args += !strcmp(argv[i], "--exit-command-arg");
    }
    opt.runtime_args = keep((size_t)(n_runtime_args + 1) * sizeof(char *));
    opt.exit_args = keep((size_t)(n_exit_args + 2) * sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            write_all(1, USAGE, sizeof USAGE - 1);
            exit(0);
        }
        if (!strcmp(a, "--tty")) {
            opt.tty = 1;
            continue;
        }
        if (!strcmp(a, "--stdin")) {
            opt.with_stdin = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage_error(a, " needs a value or is unknown", END);
        const char *v = argv[++i];
        if (!strcmp(a, "--id"))
            opt.id = v;
        else if (!strcmp(a, "--bundle"))
            opt.bundle = v;
        else if (!strcmp(a, "--runtime"))
            opt.runtime = v;
        else if (!strcmp(a, "--runtime-arg"))
            opt.runtime_args[opt.n_runtime_args++] = (char *)v;
        else if (!strcmp(a, "--runtime-root"))
            opt.runtime_root = v;
        else if (!strcmp(a, "--log-path"))
            opt.log_path = v;
        else if (!strcmp(a, "--log-max-size"))
            opt.log_max_size = parse_size(v, a);
        else if (!strcmp(a, "--log-max-files"))
            opt.log_max_files = (int)parse_size(v, a);
        else if (!strcmp(a, "--exit-file"))
            opt.exit_file = v;
        else if (!strcmp(a, "--socket-dir"))
            opt.socket_dir = v;
        else if (!strcmp(a, "--sync-fd"))
            ;
        else if (!strcmp(a, "--exit-command"))
            opt.exit_command = v;
        else if (!strcmp(a, "--exit-command-arg"))
            opt.exit_args[1 + opt.n_exit_args++] = (char *)v;
        else
            usage_error("unknown flag ", a, END);
    }
    const char *missing = !opt.id             ? "--id"
                          : !opt.bundle       ? "--bundle"
                          : !opt.runtime      ? "--runtime"
                          : !opt.runtime_root ? "--runtime-root"
                          : !opt.log_path     ? "--log-path"
                          : !opt.exit_file    ? "--exit-file"
                          : !opt.socket_dir   ? "--socket-dir"
                                              : NULL;
    if (missing)
        usage_error(missing, " is required", END);
    if (opt.log_max_files < 1)
        opt.log_max_files = 1;
    opt.bundle = absolute(opt.bundle);
    opt.runtime_root = absolute(opt.runtime_root);
    opt.log_path = absolute(opt.log_path);
    opt.exit_file = absolute(opt.exit_file);
    opt.socket_dir = absolute(opt.socket_dir);
    if (strchr(opt.runtime, '/'))
        opt.runtime = absolute(opt.runtime);
    if (opt.exit_command && strchr(opt.exit_command, '/'))
        opt.exit_command = absolute(opt.exit_command);
    opt.exit_args[0] = (char *)opt.exit_command;
}

static void mkdir_p(const char *path)
{
    char p[strlen(path) + 1];
    strcpy(p, path);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0700);
            *s = '/';
        }
    }
    if (mkdir(p, 0700) < 0 && errno != EEXIST)
        fail("cannot create ", p, ": ", err_text(errno), END);
}

/* close_range(2) without libc's wrapper, which musl lacks. */
static void close_fds(unsigned first, unsigned last, int flags)
{
    syscall(SYS_close_range, first, last, flags);
}

/* Only the sync fd survives from the caller; everything else is ours. */
static void close_inherited_fds(void)
{
    if (opt.sync_fd >= 0 && opt.sync_fd <= 2) {
        int fd = fcntl(opt.sync_fd, F_DUPFD_CLOEXEC, 3);
        opt.sync_fd = fd;
    }
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2)
            close(null);
    }
    if (opt.sync_fd >= 0) {
        if (opt.sync_fd > 3)
            close_fds(3, (unsigned)opt.sync_fd - 1, 0);
        close_fds((unsigned)opt.sync_fd + 1, ~0U, 0);
        /* the runtime and the container must not hold the caller's pipe open */
        fcntl(opt.sync_fd, F_SETFD, FD_CLOEXEC);
    } else
        close_fds(3, ~0U, 0);
}

static void daemonize(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        usage_error("fork: ", err_text(errno), END);
        exit(1);
    }
    if (pid > 0) {
        /* Reap the middle process so that no zombie is left to init, then let the
         * caller's waitpid return: creating the container is reported on the sync fd. */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    setsid();
    pid = fork();
    if (pid < 0)
        _exit(1);
    if (pid > 0)
        _exit(0);
    if (chdir("/") < 0)
        _exit(1);
    umask(022);
    close_inherited_fds();
    prctl(PR_SET_CHILD_SUBREAPER, 1);
}

static int listen_unix(const char *path, int backlog)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        fail("socket path ", path, " is too long (at most 107 bytes)", END);
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        fail("socket: ", err_text(errno), END);
    unlink(path);
    mode_t old = umask(0177);
    int r = bind(fd, (struct sockaddr *)&addr, sizeof addr);
    umask(old);
    if (r < 0 || listen(fd, backlog) < 0)
        fail("cannot listen on ", path, ": ", err_text(errno), END);
    return fd;
}

static sigset_t blocked;

static void reset_signals_for_exec(void)
{
    signal(SIGPIPE, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, &blocked, NULL);
}

static pid_t spawn_runtime(int in, int out, int err)
{
    char *argv[opt.n_runtime_args + 16];
    int n = 0;
    argv[n++] = (char *)opt.runtime;
    for (int i = 0; i < opt.n_runtime_args; i++)
        argv[n++] = opt.runtime_args[i];
    argv[n++] = "--root";
    argv[n++] = (char *)opt.runtime_root;
    argv[n++] = "create";
    argv[n++] = "--bundle";
    argv[n++] = (char *)opt.bundle;
    argv[n++] = "--pid-file";
    argv[n++] = container_pid_path;
    if (opt.tty) {
        argv[n++] = "--console-socket";
        argv[n++] = console_path;
    }
    argv[n++] = (char *)opt.id;
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        reset_signals_for_exec();
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        execvp(argv[0], argv);
        const char *why = err_text(errno);
        write_all(2, "cannot run the runtime ", 23);
        write_all(2, argv[0], strlen(argv[0]));
        write_all(2, ": ", 2);
        write_all(2, why, strlen(why));
        _exit(127);
    }
    return pid;
}

/* The pty master, sent by the runtime over console.sock with SCM_RIGHTS. */
static int receive_console(void)
{
    int conn = accept4(console_fd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0)
        return -1;
    char data[64];
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {data, sizeof data};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control,
                         .msg_controllen = sizeof control};
    int fd = -1;
    ssize_t r;
    do
        r = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    if (r >= 0) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                memcpy(&fd, CMSG_DATA(c), sizeof fd);
    }
    close(conn);
    return fd;
}

static pid_t read_container_pid(void)
{
    char buf[32];
    int fd = open(container_pid_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0)
        return -1;
    buf[r] = 0;
    return (pid_t)atol(buf);
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* Run `runtime create`, collecting its stderr, until it exits. Returns the container's
 * init pid; on failure reports it and exits. */
static pid_t create_container(int sigfd)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    int out[2] = {-1, -1}, err[2], in[2] = {-1, -1};
    if (pipe2(err, O_CLOEXEC) < 0)
        fail("pipe: ", err_text(errno), END);
    if (!opt.tty && pipe2(out, O_CLOEXEC) < 0)
        fail("pipe: ", err_text(errno), END);
    if (!opt.tty && opt.with_stdin && pipe2(in, O_CLOEXEC) < 0)
        fail("pipe: ", err_text(errno), END);
    if (opt.tty)
        console_fd = listen_unix(console_path, 1);
    /* Without a tty the runtime's stdio is the container's: its stderr is the
     * container's stderr pipe, and all that arrives there before the container is
     * started comes from the runtime. */
    pid_t runtime = spawn_runtime(in[0] >= 0 ? in[0] : null, opt.tty ? null : out[1], err[1]);
    if (runtime < 0)
        fail("fork: ", err_text(errno), END);
    close(err[1]);
    if (out[1] >= 0)
        close(out[1]);
    if (in[0] >= 0)
        close(in[0]);
    close(null);
    set_nonblock(err[0]);

    char *errbuf = bufs.err;
    size_t errlen = 0;
    int status = 0, err_open = 1;
    for (;;) {
        struct pollfd p[2] = {{sigfd, POLLIN, 0}, {err[0], err_open ? POLLIN : 0, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            fail("poll: ", err_text(errno), END);
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sigfd, &si, sizeof si) > 0)
                ;
        }
        if (err_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            char sink[256]; /* past ERR_BUF: read and dropped, so the runtime never blocks */
            size_t room = ERR_BUF - 1 - errlen;
            ssize_t r = room ? read(err[0], errbuf + errlen, room) : read(err[0], sink, sizeof sink);
            if (r > 0)
                errlen += room ? (size_t)r : 0;
            else if (r == 0 || errno != EAGAIN)
                err_open = 0;
        }
        pid_t w = waitpid(runtime, &status, WNOHANG);
        if (w == runtime)
            break;
    }
    /* What the runtime wrote just before it exited. */
    while (err_open && errlen < ERR_BUF - 1) {
        ssize_t r = read(err[0], errbuf + errlen, ERR_BUF - 1 - errlen);
        if (r <= 0)
            break;
        errlen += (size_t)r;
    }
    errbuf[errlen] = 0;
    errlen = trim(errbuf, errlen);

    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (errlen)
            fail(errbuf, END);
        if (WIFSIGNALED(status))
            fail(opt.runtime, " create was killed by signal ", NUM(WTERMSIG(status)), END);
        fail(opt.runtime, " create failed with exit code ", NUM(WEXITSTATUS(status)), END);
    }
    pid_t pid = read_container_pid();
    if (pid <= 0)
        fail(opt.runtime, " create did not write the pid file ", container_pid_path, END);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0)
        fail("container process ", NUM(pid), " is not a child of the shim: ", err_text(errno), END);
    if (opt.tty) {
        master_fd = receive_console();
        close(console_fd);
        console_fd = -1;
        unlink(console_path);
        if (master_fd < 0)
            fail(opt.runtime, " create did not send a terminal on the console socket", END);
        set_nonblock(master_fd);
        streams[0].fd = master_fd;
        if (opt.with_stdin)
            stdin_fd = master_fd;
        close(err[0]);
    } else {
        streams[0].fd = out[0];
        streams[1].fd = err[0];
        set_nonblock(out[0]);
        if (in[1] >= 0) {
            stdin_fd = in[1];
            set_nonblock(stdin_fd);
        }
    }
    report_to_sync("pid", errbuf, errlen, (long)pid);
    return pid;
}

/* ---- after the container exits ---------------------------------------------------- */

static void finish(int code)
{
    for (int i = 0; i < 2; i++)
        if (streams[i].fd >= 0)
            drain_stream(&streams[i]);
    if (log_fd >= 0)
        close(log_fd);
    write_exit_code(code);
    flush_backlogs_before_exit();
    for (int i = 0; i < n_clients; i++)
        drop_client(&clients[i]);
    n_clients = 0; /* EOF tells attached clients it is over */
    if (listen_fd >= 0)
        close(listen_fd);
    unlink(sock_path);
    unlink(container_pid_path);
    close_stdin();
    if (master_fd >= 0)
        close(master_fd);
    if (!opt.exit_command)
        exit(0);
    reset_signals_for_exec();
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    close_fds(3, ~0U, 0);
    execvp(opt.exit_command, opt.exit_args);
    shim_log("cannot run the exit command ", opt.exit_command, ": ", err_text(errno), END);
    exit(1);
}

static int exit_code_of(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 255;
}

/* Reap every child that has exited (we are a subreaper); finish once it is the container. */
static void reap_children(pid_t container)
{
    int status;
    pid_t w;
    while ((w = waitpid(-1, &status, WNOHANG)) > 0)
        if (w == container)
            finish(exit_code_of(status));
}

static void accept_clients(void)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        add_client(fd);
    }
}

/* Every buffer is empty (the container is up, or output stopped a while ago): give
 * their pages back, and the stack below this point, which only start-up and the
 * handling of events used. They are zero pages again the next time they are touched. */
static void __attribute__((noinline)) release_idle_memory(void)
{
    madvise(&bufs, sizeof bufs, MADV_DONTNEED);
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    uintptr_t end = (here - 1024) & ~(uintptr_t)(PAGE - 1); /* room for madvise itself */
    /* The range may start below the stack mapping: madvise then says ENOMEM, and has
     * still dropped the pages that are mapped. */
    madvise((void *)(end - STACK_RELEASE), STACK_RELEASE, MADV_DONTNEED);
}

int main(int argc, char **argv)
{
    init_streams();
    parse_args(argc, argv);
    daemonize();

    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
    int sigfd = signalfd(-1, &blocked, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0)
        fail("signalfd: ", err_text(errno), END);

    mkdir_p(opt.socket_dir);
    sock_path = path_in(opt.socket_dir, "attach.sock");
    console_path = path_in(opt.socket_dir, "console.sock");
    pid_path = path_in(opt.socket_dir, "shim.pid");
    container_pid_path = path_in(opt.socket_dir, "container.pid");
    char pidbuf[24];
    size_t n = strlen(num(getpid(), pidbuf));
    pidbuf[n++] = '\n';
    write_file_atomic(pid_path, pidbuf, n, 0);
    unlink(opt.exit_file);
    unlink(container_pid_path);

    if (open_log(0) < 0)
        fail("cannot open the log file ", opt.log_path, ": ", err_text(errno), END);
    /* Clients can attach before the container starts, so no output is missed. */
    listen_fd = listen_unix(sock_path, 16);

    pid_t container = create_container(sigfd);
    reap_children(container); /* killed before we polled: its SIGCHLD is already read */

    struct pollfd few[8], *pfds = few; /* the heap only for many clients */
    int cap_pfds = 8, busy = 0;
    release_idle_memory();
    for (;;) {
        int need = n_clients + 5;
        if (need > cap_pfds) {
            cap_pfds = need * 2;
            struct pollfd *more = malloc((size_t)cap_pfds * sizeof *pfds);
            if (!more)
                abort();
            if (pfds != few)
                free(pfds);
            pfds = more;
        }
        int np = 0;
        pfds[np++] = (struct pollfd){sigfd, POLLIN, 0};
        pfds[np++] = (struct pollfd){streams[0].fd, POLLIN, 0};
        pfds[np++] = (struct pollfd){streams[1].fd, POLLIN, 0};
        pfds[np++] = (struct pollfd){listen_fd, POLLIN, 0};
        pfds[np++] =
            (struct pollfd){stdin_len > 0 ? stdin_fd : -1, POLLOUT, 0}; /* fd -1: ignored */
        int first_client = np;
        for (int i = 0; i < n_clients; i++)
            pfds[np++] = (struct pollfd){clients[i].fd,
                                         (short)((stdin_len == 0 && !clients[i].input_closed
                                                      ? POLLIN
                                                      : 0) |
                                                 (clients[i].backlog ? POLLOUT : 0)),
                                         0};
        /* After activity, once nothing has moved for a while, the buffers go back to
         * the kernel again: a container that logged at start idles at the same cost. */
        int ready = poll(pfds, (nfds_t)np, busy ? IDLE_RELEASE_MS : -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            shim_log("poll: ", err_text(errno), END);
            sleep(1);
            continue;
        }
        if (ready == 0) {
            if (streams[0].used == 0 && streams[1].used == 0 && stdin_len == 0)
                release_idle_memory();
            busy = 0; /* a partial line keeps its page until the next release */
            continue;
        }
        busy = 1;
        for (int i = 0; i < 2; i++)
            if (streams[i].fd >= 0 && (pfds[1 + i].revents & (POLLIN | POLLHUP | POLLERR)))
                read_stream(&streams[i]);
        if (pfds[3].revents & POLLIN)
            accept_clients();
        if (pfds[4].revents)
            flush_stdin();
        int n_polled = np - first_client;
        for (int i = 0; i < n_polled && i < n_clients; i++) {
            short re = pfds[first_client + i].revents;
            if (clients[i].fd < 0)
                continue;
            if ((re & POLLOUT) && clients[i].backlog)
                flush_backlog(&clients[i]);
            if (clients[i].fd < 0)
                continue;
            if ((re & POLLIN) && stdin_len == 0)
                client_input(&clients[i]);
            else if (re & (POLLHUP | POLLERR))
                drop_client(&clients[i]);
        }
        compact_clients();
        if (pfds[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sigfd, &si, sizeof si) > 0)
                ;
            reap_children(container);
        }
    }
}
