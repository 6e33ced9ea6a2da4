/* LD_PRELOAD library for tests/python/test_reseal_crash_steps.py: counts the durable steps a
 * process takes inside one directory — a successful fsync or fdatasync of a file or of the
 * directory itself, link, rename or unlink of a name in it — and kills the process with SIGKILL
 * right after the Nth one, as a power cut or kill -9 would stop it there.
 *
 *   CRASH_DIR    the directory watched (absolute, no trailing slash)
 *   CRASH_AFTER  N: SIGKILL after the Nth step (0: never; the steps are still logged)
 *   CRASH_LOG    file that receives one line per step, "<n> <call> <path>", before any kill
 *
 * Nothing else changes: every call is passed to the C library and its result returned. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int counter;

static int inside(const char *path) {
    const char *dir = getenv("CRASH_DIR");
    if (dir == NULL || path == NULL) return 0;
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static void step(const char *call, const char *path) {
    if (!inside(path)) return;
    int n = __atomic_add_fetch(&counter, 1, __ATOMIC_SEQ_CST);
    const char *log = getenv("CRASH_LOG");
    if (log != NULL) {
        char line[PATH_MAX + 64];
        int len = snprintf(line, sizeof line, "%d %s %s\n", n, call, path);
        int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            if (len > 0) (void)!write(fd, line, (size_t)len);
            close(fd);
        }
    }
    const char *after = getenv("CRASH_AFTER");
    if (after != NULL && atoi(after) == n) raise(SIGKILL);
}

static void fd_step(const char *call, int fd) {
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    if (len <= 0) return;
    path[len] = '\0';
    step(call, path);
}

/* The C library's own function, looked up once. */
#define REAL(name) \
    if (!real_##name) *(void **)(&real_##name) = dlsym(RTLD_NEXT, #name)

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_link)(const char *, const char *);
static int (*real_linkat)(int, const char *, int, const char *, int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);

int fsync(int fd) {
    REAL(fsync);
    int r = real_fsync(fd);
    if (r == 0) fd_step("fsync", fd);
    return r;
}

int fdatasync(int fd) {
    REAL(fdatasync);
    int r = real_fdatasync(fd);
    if (r == 0) fd_step("fdatasync", fd);
    return r;
}

int link(const char *from, const char *to) {
    REAL(link);
    int r = real_link(from, to);
    if (r == 0) step("link", to);
    return r;
}

int linkat(int fromfd, const char *from, int tofd, const char *to, int flags) {
    REAL(linkat);
    int r = real_linkat(fromfd, from, tofd, to, flags);
    if (r == 0) step("link", to);
    return r;
}

int rename(const char *from, const char *to) {
    REAL(rename);
    int r = real_rename(from, to);
    if (r == 0) step("rename", to);
    return r;
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
    REAL(renameat);
    int r = real_renameat(fromfd, from, tofd, to);
    if (r == 0) step("rename", to);
    return r;
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
    REAL(renameat2);
    int r = real_renameat2(fromfd, from, tofd, to, flags);
    if (r == 0) step("rename", to);
    return r;
}

int unlink(const char *path) {
    REAL(unlink);
    int r = real_unlink(path);
    if (r == 0) step("unlink", path);
    return r;
}

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(unlinkat);
    int r = real_unlinkat(dirfd, path, flags);
    if (r == 0) step("unlink", path);
    return r;
}
