/*
 * In-guest half of the vhost-user-blk end-to-end tests (tests/guest_e2e.rs,
 * tests/guest_serve.rs).
 *
 * Runs as a static binary from /init: e2e-guest /dev/vda
 * Parameters come from the kernel command line (all optional):
 *   e2e.seed=U64            pattern seed (the host verifies the image with it)
 *   e2e.expect_size=SECT    expected disk size in 512-byte sectors
 *   e2e.queues=N            expected number of virtio queues (blk-mq hw queues)
 *   e2e.serial=TEXT         expected serial (GET_ID)
 *   e2e.discard_zeroes=0|1  1: a discarded range must read back as zeroes
 *   e2e.resize_to=SECT      wait for the disk to grow to SECT sectors
 *   e2e.resize_timeout=S    how long to wait for the resize (default 60)
 *   e2e.mode=checks|churn   checks (default) or the churn workload below
 *   e2e.prior_seed=U64      with e2e.prior_ranges=OFF+LEN,...: those ranges
 *                           must hold the pattern of that seed (data written
 *                           by an earlier guest on the same backend)
 * Prints one line per check on stdout (the serial console):
 *   E2E-RESULT name=NAME status=ok|fail key=value ...
 * then E2E-DONE ok|fail. Exit status 0 when all checks pass, else 1.
 * Ranges written with the pattern or expected to be zero are printed as
 * OFFSET+LENGTH lists so the host can check the backing file afterwards.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512ULL
#define KIB 1024ULL
#define MIB (1024ULL * 1024ULL)
#define ALIGN 4096

static const char *dev_path;
static const char *dev_name;
static uint64_t seed = 1;
static int failures;

/* One write(2) per line, so kernel messages cannot split it. */
static void out(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(1, line + off, (size_t)(n - off));
        if (w <= 0)
            return;
        off += w;
    }
}

static void result(const char *name, int ok, const char *fmt, ...)
{
    char extra[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(extra, sizeof(extra), fmt, ap);
    va_end(ap);
    if (!ok)
        failures++;
    out("E2E-RESULT name=%s status=%s %s", name, ok ? "ok" : "fail", extra);
}

/* --- kernel command line ------------------------------------------------ */

static char cmdline[4096];

static const char *param(const char *key)
{
    size_t klen = strlen(key);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ' || *p == '\n')
            p++;
        if (strncmp(p, key, klen) == 0 && p[klen] == '=')
            return p + klen + 1;
        while (*p && *p != ' ' && *p != '\n')
            p++;
    }
    return NULL;
}

/* Copies a parameter's value (up to the next space) into buf; 0 if absent. */
static int param_str(const char *key, char *buf, size_t len)
{
    const char *v = param(key);
    if (!v || len == 0)
        return 0;
    size_t i = 0;
    while (v[i] && v[i] != ' ' && v[i] != '\n' && i + 1 < len) {
        buf[i] = v[i];
        i++;
    }
    buf[i] = 0;
    return 1;
}

/* Parses an unsigned parameter; returns 0 when absent or malformed. */
static int param_u64(const char *key, uint64_t *val)
{
    char buf[32], *end;
    if (!param_str(key, buf, sizeof(buf)) || !buf[0])
        return 0;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 0);
    if (errno || *end) {
        out("E2E-LOG bad-parameter %s=%s", key, buf);
        return 0;
    }
    *val = v;
    return 1;
}

/* --- sysfs --------------------------------------------------------------- */

static int read_sysfs(const char *rel, char *buf, size_t len)
{
    char path[256];
    snprintf(path, sizeof(path), "/sys/block/%s/%s", dev_name, rel);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = 0;
    return 0;
}

static int sysfs_u64(const char *rel, uint64_t *val)
{
    char buf[64];
    if (read_sysfs(rel, buf, sizeof(buf)) < 0)
        return -1;
    char *end;
    *val = strtoull(buf, &end, 10);
    return end == buf ? -1 : 0;
}

/* --- the pattern ----------------------------------------------------------
 * Each 8-byte word at byte offset o (8-aligned) of the disk holds
 * splitmix64(seed ^ (o / 8)) little endian; the host computes the same. */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void fill_pattern(uint8_t *buf, uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 8) {
        uint64_t w = splitmix64(seed ^ ((off + i) / 8));
        for (int b = 0; b < 8; b++)
            buf[i + (uint64_t)b] = (uint8_t)(w >> (8 * b));
    }
}

static uint8_t *alloc_buf(uint64_t len)
{
    void *p = NULL;
    if (posix_memalign(&p, ALIGN, len ? len : ALIGN) != 0)
        return NULL;
    return p;
}

static int open_dev(void)
{
    int fd = open(dev_path, O_RDWR | O_DIRECT);
    if (fd < 0)
        out("E2E-LOG open %s: %s", dev_path, strerror(errno));
    return fd;
}

static int pwrite_all(int fd, const uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));
        if (n <= 0) {
            out("E2E-LOG pwrite off=%llu len=%llu: %s", (unsigned long long)(off + done),
                (unsigned long long)(len - done), n < 0 ? strerror(errno) : "short write");
            return -1;
        }
        done += (uint64_t)n;
    }
    return 0;
}

static int pread_all(int fd, uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));
        if (n <= 0) {
            out("E2E-LOG pread off=%llu len=%llu: %s", (unsigned long long)(off + done),
                (unsigned long long)(len - done), n < 0 ? strerror(errno) : "unexpected EOF");
            return -1;
        }
        done += (uint64_t)n;
    }
    return 0;
}

/* Writes the pattern to [off, off+len) with O_DIRECT and flushes. */
static int write_pattern(int fd, uint64_t off, uint64_t len)
{
    uint8_t *buf = alloc_buf(len);
    if (!buf)
        return -1;
    fill_pattern(buf, off, len);
    int rc = pwrite_all(fd, buf, len, off);
    free(buf);
    if (rc == 0 && fdatasync(fd) != 0) {
        out("E2E-LOG fdatasync: %s", strerror(errno));
        rc = -1;
    }
    return rc;
}

/* Reads [off, off+len) with O_DIRECT into a poisoned buffer and compares it
 * with the pattern (want_zero=0) or with zeroes (want_zero=1). Returns 0 on a
 * match, 1 on a mismatch (logged), -1 on an I/O error. */
static int verify(int fd, uint64_t off, uint64_t len, int want_zero)
{
    uint8_t *buf = alloc_buf(len), *want = malloc(len ? len : 1);
    int rc = -1;
    if (!buf || !want)
        goto outfree;
    memset(buf, 0xa5, len);
    if (want_zero)
        memset(want, 0, len);
    else
        fill_pattern(want, off, len);
    if (pread_all(fd, buf, len, off) != 0)
        goto outfree;
    rc = 0;
    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] != want[i]) {
            out("E2E-LOG mismatch at byte %llu: got 0x%02x want 0x%02x (%s)",
                (unsigned long long)(off + i), buf[i], want[i], want_zero ? "zero" : "pattern");
            rc = 1;
            break;
        }
    }
outfree:
    free(buf);
    free(want);
    return rc;
}

/* Appends "off+len" to a comma-separated list. */
static void add_range(char *list, size_t cap, uint64_t off, uint64_t len)
{
    size_t used = strlen(list);
    snprintf(list + used, cap - used, "%s%llu+%llu", used ? "," : "", (unsigned long long)off,
             (unsigned long long)len);
}

/* --- checks -------------------------------------------------------------- */

static uint64_t disk_sectors(void)
{
    uint64_t s = 0;
    if (sysfs_u64("size", &s) < 0)
        return 0;
    return s;
}

static uint64_t check_size(void)
{
    uint64_t sectors = disk_sectors(), expect = 0, bytes = 0;
    int fd = open(dev_path, O_RDONLY);
    int ioctl_ok = fd >= 0 && ioctl(fd, BLKGETSIZE64, &bytes) == 0;
    if (fd >= 0)
        close(fd);
    int have_expect = param_u64("e2e.expect_size", &expect);
    int ok = sectors > 0 && ioctl_ok && bytes == sectors * SECTOR && (!have_expect || sectors == expect);
    char lbs[32] = "?", wc[32] = "?";
    read_sysfs("queue/logical_block_size", lbs, sizeof(lbs));
    read_sysfs("queue/write_cache", wc, sizeof(wc));
    for (char *c = wc; *c; c++)
        if (*c == ' ')
            *c = '-';
    result("size", ok, "sectors=%llu bytes=%llu expect=%s%llu logical_block_size=%s write_cache=%s",
           (unsigned long long)sectors, (unsigned long long)bytes, have_expect ? "" : "any/",
           (unsigned long long)expect, lbs, wc);
    return sectors;
}

static uint64_t hw_queue_count(void);

static void check_queues(void)
{
    uint64_t n = hw_queue_count(), expect = 0;
    int have = param_u64("e2e.queues", &expect);
    result("queues", n > 0 && (!have || n == expect), "hw_queues=%llu expect=%s%llu cpus=%ld",
           (unsigned long long)n, have ? "" : "any/", (unsigned long long)expect,
           sysconf(_SC_NPROCESSORS_ONLN));
}

static void check_serial(void)
{
    char serial[64] = "", expect[64] = "";
    int have_serial = read_sysfs("serial", serial, sizeof(serial)) == 0;
    int have_expect = param_str("e2e.serial", expect, sizeof(expect));
    for (char *c = serial; *c; c++)
        if (*c == ' ' || *c < 0x20 || *c > 0x7e)
            *c = '_';
    int ok = have_expect ? (have_serial && strcmp(serial, expect) == 0) : 1;
    result("serial", ok, "serial=%s expect=%s", have_serial ? (serial[0] ? serial : "(empty)") : "(none)",
           have_expect ? expect : "(any)");
}

/* O_DIRECT write and read back at several offsets and sizes, including
 * sub-page, page-unaligned multi-page, large (split into several requests)
 * and the last bytes of the disk. */
static void check_pattern(uint64_t sectors)
{
    uint64_t size = sectors * SECTOR;
    if (size < 16 * MIB) {
        result("pattern", 0, "reason=disk-smaller-than-16MiB");
        return;
    }
    const uint64_t cases[][2] = {
        {0, 512},
        {7 * SECTOR, 3 * SECTOR},            /* sub-page, not page aligned */
        {4 * KIB, 4 * KIB},                  /* one page */
        {64 * KIB, 64 * KIB},                /* multi-page */
        {MIB + SECTOR, 256 * KIB + SECTOR},  /* multi-page, not page aligned */
        {4 * MIB, 4 * MIB},                  /* larger than one request */
        {size - 8 * KIB, 8 * KIB},           /* the end of the disk */
    };
    char ranges[1024] = "";
    int fd = open_dev(), ok = fd >= 0;
    uint64_t total = 0;
    for (size_t i = 0; ok && i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (write_pattern(fd, cases[i][0], cases[i][1]) != 0 || verify(fd, cases[i][0], cases[i][1], 0) != 0)
            ok = 0;
        add_range(ranges, sizeof(ranges), cases[i][0], cases[i][1]);
        total += cases[i][1];
    }
    /* Read everything again through a fresh descriptor. */
    if (fd >= 0)
        close(fd);
    fd = ok ? open_dev() : -1;
    for (size_t i = 0; fd >= 0 && ok && i < sizeof(cases) / sizeof(cases[0]); i++)
        if (verify(fd, cases[i][0], cases[i][1], 0) != 0)
            ok = 0;
    if (fd >= 0)
        close(fd);
    result("pattern", ok, "bytes=%llu ranges=%s", (unsigned long long)total, ranges);
}

/* Runs busybox blkdiscard on a range written with the pattern; the range
 * must read back as zeroes when e2e.discard_zeroes=1, and the pages around
 * it must keep the pattern. */
static void check_discard(void)
{
    const uint64_t off = 8 * MIB, len = 2 * MIB, guard = 4 * KIB;
    uint64_t max = 0, want_zero = 0;
    sysfs_u64("queue/discard_max_bytes", &max);
    param_u64("e2e.discard_zeroes", &want_zero);
    if (max == 0) {
        result("discard", 0, "reason=device-does-not-support-discard discard_max_bytes=0");
        return;
    }
    int fd = open_dev();
    if (fd < 0 || write_pattern(fd, off - guard, len + 2 * guard) != 0) {
        result("discard", 0, "reason=cannot-write-pattern");
        if (fd >= 0)
            close(fd);
        return;
    }
    char o[32], l[32];
    snprintf(o, sizeof(o), "%llu", (unsigned long long)off);
    snprintf(l, sizeof(l), "%llu", (unsigned long long)len);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/blkdiscard", "blkdiscard", "-o", o, "-l", l, dev_path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        result("discard", 0, "reason=blkdiscard-failed status=%d", status);
        close(fd);
        return;
    }
    int zero = verify(fd, off, len, 1);
    int guards = verify(fd, off - guard, guard, 0) == 0 && verify(fd, off + len, guard, 0) == 0;
    close(fd);
    int ok = zero >= 0 && guards && (!want_zero || zero == 0);
    char zr[64] = "", pr[64] = "";
    add_range(zr, sizeof(zr), off, len);
    add_range(pr, sizeof(pr), off - guard, guard);
    add_range(pr, sizeof(pr), off + len, guard);
    result("discard", ok, "discard_max_bytes=%llu zeroed=%s required=%s guards_intact=%s %s=%s ranges=%s",
           (unsigned long long)max, zero == 0 ? "yes" : "no", want_zero ? "yes" : "no", guards ? "yes" : "no",
           zero == 0 ? "zero_ranges" : "discarded", zr, pr);
}

/* BLKZEROOUT (write zeroes; offloaded when the device offers WRITE_ZEROES). */
static void check_write_zeroes(void)
{
    const uint64_t off = 12 * MIB, len = MIB, guard = 4 * KIB;
    uint64_t max = 0;
    sysfs_u64("queue/write_zeroes_max_bytes", &max);
    int fd = open_dev();
    if (fd < 0 || write_pattern(fd, off - guard, len + 2 * guard) != 0) {
        result("write_zeroes", 0, "reason=cannot-write-pattern");
        if (fd >= 0)
            close(fd);
        return;
    }
    uint64_t range[2] = {off, len};
    if (ioctl(fd, BLKZEROOUT, range) != 0) {
        result("write_zeroes", 0, "reason=BLKZEROOUT-failed errno=%s", strerror(errno));
        close(fd);
        return;
    }
    int zero = verify(fd, off, len, 1);
    int guards = verify(fd, off - guard, guard, 0) == 0 && verify(fd, off + len, guard, 0) == 0;
    close(fd);
    char zr[64] = "", pr[64] = "";
    add_range(zr, sizeof(zr), off, len);
    add_range(pr, sizeof(pr), off - guard, guard);
    add_range(pr, sizeof(pr), off + len, guard);
    result("write_zeroes", zero == 0 && guards, "offloaded=%s write_zeroes_max_bytes=%llu zero_ranges=%s ranges=%s",
           max ? "yes" : "no", (unsigned long long)max, zr, pr);
}

/* One process per CPU, each pinned, writes and verifies its own region: with
 * several queues each CPU submits on its own virtqueue. */
static void check_parallel(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1)
        cpus = 1;
    if (cpus > 16)
        cpus = 16;
    const uint64_t base = 16 * MIB, stride = MIB, len = 512 * KIB, rounds = 8;
    pid_t pids[16];
    for (long c = 0; c < cpus; c++) {
        pids[c] = fork();
        if (pids[c] == 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET((int)c, &set);
            sched_setaffinity(0, sizeof(set), &set);
            int fd = open_dev();
            if (fd < 0)
                _exit(1);
            uint64_t off = base + (uint64_t)c * stride;
            for (uint64_t r = 0; r < rounds; r++) {
                uint64_t chunk = len / rounds, o = off + r * chunk;
                if (write_pattern(fd, o, chunk) != 0 || verify(fd, o, chunk, 0) != 0)
                    _exit(1);
            }
            if (verify(fd, off, len, 0) != 0)
                _exit(1);
            _exit(0);
        }
    }
    int ok = 1;
    char ranges[512] = "";
    for (long c = 0; c < cpus; c++) {
        int status = 0;
        if (pids[c] < 0 || waitpid(pids[c], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            ok = 0;
        add_range(ranges, sizeof(ranges), base + (uint64_t)c * stride, len);
    }
    result("parallel", ok, "workers=%ld ranges=%s", cpus, ranges);
}

/* Counts the blk-mq hardware queues (/sys/block/DEV/mq/N). */
static uint64_t hw_queue_count(void)
{
    char path[256];
    snprintf(path, sizeof(path), "/sys/block/%s/mq", dev_name);
    DIR *d = opendir(path);
    uint64_t n = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                n++;
        closedir(d);
    }
    return n;
}

/* Every virtqueue completed requests: the interrupt of each request queue
 * (MSI-X vector "virtioN-req.Q" in /proc/interrupts, summed over CPUs) has
 * fired. The backend signals a queue's interrupt only for requests it took
 * from that queue, so this proves I/O went through each of them. Runs after
 * the parallel check, which submits from every CPU. */
#define MAX_QUEUES 64
static void check_queue_irqs(void)
{
    char link[256], target[256], vdev[300];
    snprintf(link, sizeof(link), "/sys/block/%s/device", dev_name);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0) {
        result("queue_irqs", 0, "reason=cannot-read-%s", link);
        return;
    }
    target[n] = 0;
    const char *base = strrchr(target, '/');
    snprintf(vdev, sizeof(vdev), "%s-req.", base ? base + 1 : target);
    uint64_t queues = hw_queue_count();
    if (queues == 0 || queues > MAX_QUEUES) {
        result("queue_irqs", 0, "reason=hw-queues-%llu", (unsigned long long)queues);
        return;
    }
    uint64_t counts[MAX_QUEUES] = {0};
    int seen[MAX_QUEUES] = {0};
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    FILE *f = fopen("/proc/interrupts", "r");
    if (!f) {
        result("queue_irqs", 0, "reason=cannot-open-/proc/interrupts");
        return;
    }
    char line[1024];
    while (fgets(line, sizeof(line), f)) {
        char *name = strstr(line, vdev);
        if (!name)
            continue;
        char *end;
        unsigned long q = strtoul(name + strlen(vdev), &end, 10);
        if (end == name + strlen(vdev) || q >= MAX_QUEUES)
            continue;
        /* "IRQ:  count count ... chip ... name": one count per CPU. */
        char *p = strchr(line, ':');
        uint64_t sum = 0;
        for (long c = 0; p && c < cpus; c++) {
            char *start = c == 0 ? p + 1 : p;
            unsigned long long v = strtoull(start, &end, 10);
            if (end == start)
                break;
            sum += v;
            p = end;
        }
        counts[q] += sum;
        seen[q] = 1;
    }
    fclose(f);
    char list[512] = "";
    int ok = 1;
    for (uint64_t q = 0; q < queues; q++) {
        size_t used = strlen(list);
        if (seen[q])
            snprintf(list + used, sizeof(list) - used, "%s%llu", q ? "," : "", (unsigned long long)counts[q]);
        else
            snprintf(list + used, sizeof(list) - used, "%smissing", q ? "," : "");
        if (!seen[q] || counts[q] == 0)
            ok = 0;
    }
    result("queue_irqs", ok, "hw_queues=%llu irqs_per_queue=%s vector_prefix=%s", (unsigned long long)queues,
           list, vdev);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Announces the current size, waits (bounded) for the host to grow the disk,
 * then uses the new tail. */
static void check_resize(uint64_t old)
{
    uint64_t want = 0, timeout = 60;
    if (!param_u64("e2e.resize_to", &want))
        return;
    param_u64("e2e.resize_timeout", &timeout);
    out("E2E-WAIT-RESIZE old=%llu", (unsigned long long)old);
    double start = now();
    uint64_t cur = old;
    while (cur == old && now() - start < (double)timeout) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        cur = disk_sectors();
    }
    if (cur == old) {
        result("resize", 0, "old=%llu new=%llu expect=%llu reason=no-size-change-within-%llus",
               (unsigned long long)old, (unsigned long long)cur, (unsigned long long)want,
               (unsigned long long)timeout);
        return;
    }
    /* The size may move in steps; give it a moment to settle on the target. */
    while (cur != want && now() - start < (double)timeout) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        cur = disk_sectors();
    }
    int ok = cur == want;
    char ranges[128] = "";
    if (ok && cur > old) {
        uint64_t o = old * SECTOR, n = cur * SECTOR;
        uint64_t first = n - o < 64 * KIB ? n - o : 64 * KIB;
        int fd = open_dev();
        ok = fd >= 0 && write_pattern(fd, o, first) == 0 && verify(fd, o, first, 0) == 0 &&
             write_pattern(fd, n - 4 * KIB, 4 * KIB) == 0 && verify(fd, n - 4 * KIB, 4 * KIB, 0) == 0;
        if (fd >= 0)
            close(fd);
        add_range(ranges, sizeof(ranges), o, first);
        add_range(ranges, sizeof(ranges), n - 4 * KIB, 4 * KIB);
    }
    result("resize", ok, "old=%llu new=%llu expect=%llu ranges=%s", (unsigned long long)old,
           (unsigned long long)cur, (unsigned long long)want, ranges[0] ? ranges : "none");
}

/* Data an earlier guest wrote through an earlier connection must be there. */
static void check_prior(void)
{
    uint64_t prior = 0;
    char list[512];
    if (!param_u64("e2e.prior_seed", &prior))
        return;
    if (!param_str("e2e.prior_ranges", list, sizeof(list)) || !list[0]) {
        result("prior", 0, "reason=e2e.prior_ranges-missing");
        return;
    }
    uint64_t mine = seed, total = 0;
    int fd = open_dev(), ok = fd >= 0, n = 0;
    seed = prior;
    for (char *tok = strtok(list, ","); ok && tok; tok = strtok(NULL, ",")) {
        char *plus = strchr(tok, '+'), *end1, *end2;
        if (!plus) {
            ok = 0;
            break;
        }
        *plus = 0;
        uint64_t off = strtoull(tok, &end1, 10), len = strtoull(plus + 1, &end2, 10);
        if (*end1 || *end2 || len == 0 || verify(fd, off, len, 0) != 0)
            ok = 0;
        total += len;
        n++;
    }
    seed = mine;
    if (fd >= 0)
        close(fd);
    result("prior", ok, "ranges_checked=%d bytes=%llu prior_seed=%llu", n, (unsigned long long)total,
           (unsigned long long)prior);
}

/* --- churn: many writers, every acknowledged block verified ---------------
 * e2e.mode=churn runs this workload instead of the checks:
 *   e2e.churn_secs=S       how long the jobs write (default 20)
 *   e2e.churn_jobs=J       writer processes, each synchronous, so J is the
 *                          queue depth the disk sees (default 16, 1..64)
 *   e2e.churn_bytes=B      the area used, from offset 0 (default 32 MiB,
 *                          capped at the disk size)
 *   e2e.churn_errors_ok=1  I/O errors are expected (fault tests): only wrong
 *                          data fails the check
 * Each job owns a slice of 4 KiB blocks. A write gives a block a new
 * generation; its content is a function of (seed, block, generation), with
 * the block and generation in the first words so a mismatch says what was
 * found instead. One write in 32 is followed by fdatasync and one in 4 by
 * reading back a random block of the slice. When the time is up each job
 * reads its whole slice: every block must hold the generation of its last
 * acknowledged write (a block whose last write failed is not checked: a
 * failed write may leave anything in its range).
 * Prints E2E-CHURN-START, then E2E-CHURN-PROGRESS once a second (the host
 * may act on those: kill the backend, migrate), then E2E-RESULT name=churn. */

#define CHURN_BLOCK 4096ULL
#define CHURN_MAX_JOBS 64
#define CHURN_MAGIC 0x4e52554843453245ULL /* "E2ECHURN" little endian */

struct churn_stats {
    volatile uint64_t writes, reads, flushes, errors, mismatches, verified;
    char first_bad[240];
};

static uint64_t churn_word(uint64_t block, uint64_t gen, uint64_t i)
{
    if (i == 0)
        return CHURN_MAGIC;
    if (i == 1)
        return block;
    if (i == 2)
        return gen;
    return splitmix64(splitmix64(seed ^ splitmix64(block ^ splitmix64(gen))) + i);
}

static void churn_fill(uint8_t *buf, uint64_t block, uint64_t gen)
{
    for (uint64_t i = 0; i < CHURN_BLOCK / 8; i++) {
        uint64_t w = churn_word(block, gen, i);
        memcpy(buf + 8 * i, &w, 8);
    }
}

/* Whether buf holds (block, gen); a mismatch is described in why. */
static int churn_matches(const uint8_t *buf, uint64_t block, uint64_t gen, char *why, size_t len)
{
    for (uint64_t i = 0; i < CHURN_BLOCK / 8; i++) {
        uint64_t w;
        memcpy(&w, buf + 8 * i, 8);
        if (w != churn_word(block, gen, i)) {
            uint64_t magic, fblock, fgen;
            memcpy(&magic, buf, 8);
            memcpy(&fblock, buf + 8, 8);
            memcpy(&fgen, buf + 16, 8);
            snprintf(why, len,
                     "block=%llu,want_gen=%llu,word=%llu,word_value=%016llx,found=%s:block=%llu:gen=%llu",
                     (unsigned long long)block, (unsigned long long)gen, (unsigned long long)i,
                     (unsigned long long)w, magic == CHURN_MAGIC ? "churn" : "foreign",
                     (unsigned long long)fblock, (unsigned long long)fgen);
            return 0;
        }
    }
    return 1;
}

static void churn_bad(struct churn_stats *st, const char *why)
{
    st->mismatches++;
    if (!st->first_bad[0])
        snprintf(st->first_bad, sizeof(st->first_bad), "%s", why);
}

/* Checks one block against its last acknowledged generation (0: nothing
 * known, not checked). Returns -1 on a read error. */
static int churn_check_block(int fd, uint8_t *buf, uint64_t block, uint32_t gen,
                             struct churn_stats *st)
{
    if (gen == 0)
        return 0;
    memset(buf, 0xa5, CHURN_BLOCK);
    ssize_t n = pread(fd, buf, CHURN_BLOCK, (off_t)(block * CHURN_BLOCK));
    st->reads++;
    if (n != (ssize_t)CHURN_BLOCK) {
        st->errors++;
        return -1;
    }
    char why[200];
    if (!churn_matches(buf, block, gen, why, sizeof(why)))
        churn_bad(st, why);
    return 0;
}

/* Unmaps old (if any) and maps a fresh page-aligned I/O buffer. */
static uint8_t *churn_fresh_buf(uint8_t *old)
{
    if (old)
        munmap(old, CHURN_BLOCK);
    void *p = mmap(NULL, CHURN_BLOCK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    memset(p, 0, CHURN_BLOCK);
    return p;
}

/* MemTotal from /proc/meminfo in KiB (0 if unreadable). */
static uint64_t mem_total_kib(void)
{
    char buf[256];
    int fd = open("/proc/meminfo", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    unsigned long long kib = 0;
    sscanf(buf, "MemTotal: %llu", &kib);
    return kib;
}

static void churn_job(uint64_t first, uint64_t count, double until, struct churn_stats *st,
                      uint64_t job)
{
    int fd = open_dev();
    uint8_t *buf = churn_fresh_buf(NULL);
    uint32_t *cur = calloc(count, sizeof(uint32_t));
    if (fd < 0 || !buf || !cur)
        _exit(2);
    uint64_t rng = splitmix64(seed ^ (job << 48)), gen = 0;
    while (now() < until) {
        /* A fresh page now and then: I/O keeps landing in new guest
         * memory, including memory hot-added while the jobs run. */
        if (gen % 64 == 63 && !(buf = churn_fresh_buf(buf)))
            _exit(2);
        rng = splitmix64(rng);
        uint64_t i = rng % count, block = first + i;
        churn_fill(buf, block, ++gen);
        ssize_t n = pwrite(fd, buf, CHURN_BLOCK, (off_t)(block * CHURN_BLOCK));
        st->writes++;
        if (n == (ssize_t)CHURN_BLOCK) {
            cur[i] = (uint32_t)gen;
        } else {
            /* A failed write may leave anything in its range (a transfer
             * that stopped part way leaves the block torn): unknown until
             * the next acknowledged write. */
            st->errors++;
            cur[i] = 0;
        }
        if (gen % 32 == 0) {
            st->flushes++;
            if (fdatasync(fd) != 0)
                st->errors++;
        }
        if (gen % 4 == 0) {
            uint64_t j = splitmix64(rng) % count;
            churn_check_block(fd, buf, first + j, cur[j], st);
        }
    }
    for (uint64_t i = 0; i < count; i++) {
        if (cur[i] && churn_check_block(fd, buf, first + i, cur[i], st) == 0)
            st->verified++;
    }
    _exit(0);
}

static void run_churn(uint64_t sectors)
{
    uint64_t secs = 20, jobs = 16, bytes = 32 * MIB, errors_ok = 0;
    param_u64("e2e.churn_secs", &secs);
    param_u64("e2e.churn_jobs", &jobs);
    param_u64("e2e.churn_bytes", &bytes);
    param_u64("e2e.churn_errors_ok", &errors_ok);
    if (jobs < 1)
        jobs = 1;
    if (jobs > CHURN_MAX_JOBS)
        jobs = CHURN_MAX_JOBS;
    if (bytes > sectors * SECTOR)
        bytes = sectors * SECTOR;
    uint64_t blocks = bytes / CHURN_BLOCK, per_job = blocks / jobs;
    if (per_job == 0) {
        result("churn", 0, "reason=area-too-small bytes=%llu jobs=%llu", (unsigned long long)bytes,
               (unsigned long long)jobs);
        return;
    }
    struct churn_stats *stats = mmap(NULL, sizeof(*stats) * jobs, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (stats == MAP_FAILED) {
        result("churn", 0, "reason=mmap:%s", strerror(errno));
        return;
    }
    memset(stats, 0, sizeof(*stats) * jobs);
    double start = now(), until = start + (double)secs;
    uint64_t mem_start = mem_total_kib();
    pid_t pids[CHURN_MAX_JOBS];
    for (uint64_t j = 0; j < jobs; j++) {
        pids[j] = fork();
        if (pids[j] == 0)
            churn_job(j * per_job, per_job, until, &stats[j], j);
    }
    out("E2E-CHURN-START jobs=%llu secs=%llu blocks=%llu", (unsigned long long)jobs,
        (unsigned long long)secs, (unsigned long long)(per_job * jobs));
    int exited[CHURN_MAX_JOBS] = {0}, left = (int)jobs, crashed = 0;
    uint64_t w = 0, r = 0, f = 0, e = 0, m = 0, v = 0;
    while (left > 0) {
        struct timespec tick = {1, 0};
        nanosleep(&tick, NULL);
        for (uint64_t j = 0; j < jobs; j++) {
            int status = 0;
            if (exited[j])
                continue;
            if (pids[j] < 0 || waitpid(pids[j], &status, WNOHANG) != 0) {
                exited[j] = 1;
                left--;
                if (pids[j] < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                    crashed++;
            }
        }
        w = r = f = e = m = v = 0;
        for (uint64_t j = 0; j < jobs; j++) {
            w += stats[j].writes;
            r += stats[j].reads;
            f += stats[j].flushes;
            e += stats[j].errors;
            m += stats[j].mismatches;
            v += stats[j].verified;
        }
        out("E2E-CHURN-PROGRESS secs=%.0f writes=%llu reads=%llu errors=%llu mismatches=%llu",
            now() - start, (unsigned long long)w, (unsigned long long)r, (unsigned long long)e,
            (unsigned long long)m);
    }
    const char *bad = "none";
    for (uint64_t j = 0; j < jobs; j++)
        if (stats[j].first_bad[0]) {
            bad = stats[j].first_bad;
            break;
        }
    int ok = m == 0 && crashed == 0 && v > 0 && (e == 0 || errors_ok);
    result("churn", ok,
           "jobs=%llu secs=%.0f writes=%llu reads=%llu flushes=%llu io_errors=%llu mismatches=%llu "
           "verified_blocks=%llu crashed_jobs=%d mem_kib_start=%llu mem_kib_end=%llu "
           "first_mismatch=%s",
           (unsigned long long)jobs, now() - start, (unsigned long long)w, (unsigned long long)r,
           (unsigned long long)f, (unsigned long long)e, (unsigned long long)m,
           (unsigned long long)v, crashed, (unsigned long long)mem_start,
           (unsigned long long)mem_total_kib(), bad);
}

int main(int argc, char **argv)
{
    dev_path = argc > 1 ? argv[1] : "/dev/vda";
    const char *slash = strrchr(dev_path, '/');
    dev_name = slash ? slash + 1 : dev_path;
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
        cmdline[n > 0 ? n : 0] = 0;
        close(fd);
    }
    param_u64("e2e.seed", &seed);
    out("E2E-START dev=%s seed=%llu", dev_path, (unsigned long long)seed);

    uint64_t sectors = check_size();
    char mode[32] = "checks";
    param_str("e2e.mode", mode, sizeof(mode));
    if (strcmp(mode, "churn") == 0) {
        run_churn(sectors);
        out("E2E-DONE %s failures=%d", failures ? "fail" : "ok", failures);
        return failures ? 1 : 0;
    }
    check_prior();
    check_queues();
    check_serial();
    check_pattern(sectors);
    check_discard();
    check_write_zeroes();
    check_parallel();
    check_queue_irqs();
    check_resize(sectors);

    out("E2E-DONE %s failures=%d", failures ? "fail" : "ok", failures);
    return failures ? 1 : 0;
}
