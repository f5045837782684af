/*
 * Serves one domain's xenstore ring page (struct xenstore_domain_interface, xs_wire.h) to a
 * Unix-socket client, so that a test can talk to Xen's C xenstored *as an unprivileged
 * domain*. Written for xenblk, for use with xenstore-shim.c: the page is the file the shim
 * maps for the domain, the daemon is woken through the shim's evtchn FIFO and wakes us
 * through notify-<domid>.
 *
 * usage: xenstore-ring-proxy RING_FILE EVTCHN_FIFO NOTIFY_FIFO SOCKET_PATH
 * Prints "ready" once listening, serves one client, exits when it disconnects.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xen/io/xs_wire.h>

static volatile struct xenstore_domain_interface *intf;
static int kick_fd;

static void die(const char *what)
{
    fprintf(stderr, "xenstore-ring-proxy: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void kick(void)
{
    /* EAGAIN: the FIFO is full, so a wake-up is pending anyway. */
    if (write(kick_fd, "!", 1) < 0 && errno != EAGAIN)
        die("kick");
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            exit(0); /* client gone */
        }
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr;
    int ring_fd, notify_fd, lsock, client;
    char buf[XENSTORE_RING_SIZE];

    if (argc != 5) {
        fprintf(stderr, "usage: %s RING_FILE EVTCHN_FIFO NOTIFY_FIFO SOCKET_PATH\n", argv[0]);
        return 2;
    }
    ring_fd = open(argv[1], O_RDWR);
    if (ring_fd < 0)
        die(argv[1]);
    intf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0);
    if (intf == MAP_FAILED)
        die("mmap");
    kick_fd = open(argv[2], O_WRONLY | O_NONBLOCK);
    if (kick_fd < 0)
        die(argv[2]);
    /* Opened read-write so the FIFO never reports end-of-file when the daemon reopens it. */
    notify_fd = open(argv[3], O_RDWR | O_NONBLOCK);
    if (notify_fd < 0)
        die(argv[3]);

    lsock = socket(AF_UNIX, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    if (strlen(argv[4]) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "xenstore-ring-proxy: socket path too long\n");
        return 1;
    }
    strcpy(addr.sun_path, argv[4]);
    unlink(argv[4]);
    if (bind(lsock, (struct sockaddr *)&addr, sizeof(addr)) || listen(lsock, 1))
        die("listen");
    printf("ready\n");
    fflush(stdout);
    client = accept(lsock, NULL, NULL);
    if (client < 0)
        die("accept");
    close(lsock);
    unlink(argv[4]);

    for (;;) {
        int progress = 0;
        XENSTORE_RING_IDX cons, prod;

        while (read(notify_fd, buf, sizeof(buf)) > 0)
            ;
        if (intf->error) {
            fprintf(stderr, "xenstore-ring-proxy: xenstored flagged ring error %u\n", intf->error);
            return 1;
        }

        /* Responses and watch events: rsp ring -> client. */
        cons = intf->rsp_cons;
        prod = intf->rsp_prod;
        __sync_synchronize();
        if (prod - cons > XENSTORE_RING_SIZE) {
            fprintf(stderr, "xenstore-ring-proxy: bad rsp indexes\n");
            return 1;
        }
        if (prod != cons) {
            size_t off = MASK_XENSTORE_IDX(cons);
            size_t n = prod - cons;
            if (n > XENSTORE_RING_SIZE - off)
                n = XENSTORE_RING_SIZE - off;
            memcpy(buf, (const char *)intf->rsp + off, n);
            __sync_synchronize();
            intf->rsp_cons = cons + (XENSTORE_RING_IDX)n;
            kick();
            write_all(client, buf, n);
            progress = 1;
        }

        /* Requests: client -> req ring, as much as fits. */
        cons = intf->req_cons;
        prod = intf->req_prod;
        __sync_synchronize();
        if (prod - cons < XENSTORE_RING_SIZE) {
            struct pollfd p = { .fd = client, .events = POLLIN };
            if (poll(&p, 1, 0) == 1) {
                size_t off = MASK_XENSTORE_IDX(prod);
                size_t n = XENSTORE_RING_SIZE - (prod - cons);
                ssize_t r;
                if (n > XENSTORE_RING_SIZE - off)
                    n = XENSTORE_RING_SIZE - off;
                r = read(client, buf, n);
                if (r == 0)
                    return 0;
                if (r < 0 && errno != EINTR && errno != EAGAIN)
                    return 0;
                if (r > 0) {
                    memcpy((char *)intf->req + off, buf, (size_t)r);
                    __sync_synchronize();
                    intf->req_prod = prod + (XENSTORE_RING_IDX)r;
                    kick();
                    progress = 1;
                }
            }
        }

        if (!progress) {
            struct pollfd p[2] = {
                { .fd = notify_fd, .events = POLLIN },
                { .fd = client, .events = (prod - cons < XENSTORE_RING_SIZE) ? POLLIN : 0 },
            };
            if (poll(p, 2, -1) < 0 && errno != EINTR)
                die("poll");
            if (p[1].revents & (POLLHUP | POLLERR) && !(p[1].revents & POLLIN))
                return 0;
        }
    }
}
