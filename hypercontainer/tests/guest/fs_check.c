/* What busybox cannot do to a file in a volume: a shared writable mmap, an
 * extended attribute and fsync. Prints one line per check; exits non-zero
 * at the first failure. Usage: fs-check DIR */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/xattr.h>
#include <unistd.h>

static int fail(const char *what) {
    printf("%s failed: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    char path[4096];
    if (argc != 2)
        return 2;
    snprintf(path, sizeof path, "%s/mapped", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fail("open");
    if (ftruncate(fd, 8192) != 0)
        return fail("ftruncate");
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return fail("mmap");
    memcpy(p + 4096, "through mmap\n", 13);
    if (msync(p, 8192, MS_SYNC) != 0)
        return fail("msync");
    munmap(p, 8192);
    char back[13];
    if (pread(fd, back, sizeof back, 4096) != (ssize_t)sizeof back ||
        memcmp(back, "through mmap\n", 13) != 0)
        return fail("reading back");
    printf("mmap=ok\n");
    if (fsync(fd) != 0 || fdatasync(fd) != 0)
        return fail("fsync");
    printf("fsync=ok\n");
    if (fsetxattr(fd, "trusted.hc-test", "xattr-value", 11, 0) != 0)
        return fail("setxattr");
    char v[64] = {0};
    ssize_t n = fgetxattr(fd, "trusted.hc-test", v, sizeof v - 1);
    if (n != 11)
        return fail("getxattr");
    char names[256];
    ssize_t ln = flistxattr(fd, names, sizeof names);
    int listed = 0;
    for (ssize_t i = 0; i < ln; i += strlen(names + i) + 1)
        listed |= strcmp(names + i, "trusted.hc-test") == 0;
    if (fremovexattr(fd, "trusted.hc-test") != 0)
        return fail("removexattr");
    int gone = fgetxattr(fd, "trusted.hc-test", v, sizeof v) < 0 && errno == ENODATA;
    printf("xattr=%s listed=%d removed=%d\n", v, listed, gone);
    close(fd);
    return 0;
}
