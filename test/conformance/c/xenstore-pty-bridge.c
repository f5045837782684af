/*
 * Stands in for Linux's /dev/xen/xenbus in xenblk's tests: a pseudo-terminal in raw mode
 * whose other end is bridged to a xenstored Unix socket. Opening the printed pty path gives
 * a character device on which whole xs_wire.h messages are written and replies read, with
 * the same blocking-read behaviour as the xenbus device. Written for xenblk.
 *
 * usage: xenstore-pty-bridge SOCKET_PATH     (prints the pty path, then bridges until EOF)
 * Build: gcc -o xenstore-pty-bridge xenstore-pty-bridge.c -lutil
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

static int copy(int from, int to)
{
    char buf[4096];
    ssize_t n = read(from, buf, sizeof(buf));
    if (n <= 0)
        return -1;
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int master, slave, sock;
    char name[256];
    struct termios t;
    struct sockaddr_un addr;

    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET_PATH\n", argv[0]);
        return 2;
    }
    if (openpty(&master, &slave, name, NULL, NULL) != 0) {
        perror("openpty");
        return 1;
    }
    tcgetattr(slave, &t);
    cfmakeraw(&t);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    tcsetattr(slave, TCSANOW, &t);

    sock = socket(AF_UNIX, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, argv[1], sizeof(addr.sun_path) - 1);
    if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror("connect");
        return 1;
    }
    printf("%s\n", name);
    fflush(stdout);
    /* Keep our slave fd open so the master never sees a hangup between client opens. */
    for (;;) {
        struct pollfd p[2] = { { .fd = master, .events = POLLIN }, { .fd = sock, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if ((p[0].revents & POLLIN) && copy(master, sock) < 0)
            return 0;
        if ((p[1].revents & (POLLIN | POLLHUP)) && copy(sock, master) < 0)
            return 0;
    }
}
