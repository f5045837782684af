/*
 * LD_PRELOAD shim that lets Xen's own C xenstored (Debian xen-utils-4.17,
 * /usr/lib/xen-4.17/bin/xenstored) run on a Linux host without Xen, for our conformance
 * and differential tests. Written for xenblk; it replaces the few hypervisor interfaces
 * the daemon touches (see xenstored_domain.c domain_init/introduce_domain and
 * xenstored_posix.c xenbus_evtchn/xenbus_map):
 *
 *  - xc_interface_open / xengnttab_open / xenevtchn_open return dummy handles;
 *  - xc_domain_getinfo reports every domid below $XS_SHIM_DEAD_FROM (default: all) alive;
 *  - a domain's ring page (xengnttab_map_grant_ref of GNTTAB_RESERVED_XENSTORE) is the file
 *    $XS_SHIM_DIR/ring-<domid>, mapped MAP_SHARED so a proxy process can serve the ring;
 *  - the event channel fd is the FIFO $XS_SHIM_DIR/evtchn (a byte written there wakes the
 *    daemon), and xenevtchn_notify on a domain's port writes a byte to the FIFO
 *    $XS_SHIM_DIR/notify-<domid> when someone listens there;
 *  - /proc/xen/xsd_port and /proc/xen/xsd_kva (dom0's own ring) open files in $XS_SHIM_DIR.
 *
 * Build: gcc -shared -fPIC -o xenstore-shim.so xenstore-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xengnttab.h>
#include <xenevtchn.h>

#define PAGE 4096
/* Local ports handed out for interdomain bindings: BASE + domid. */
#define PORT_BASE 1000
#define VIRQ_PORT 1
#define MAX_DOMS 65536

static char dummy_handle;
static int evtchn_fd = -1;
static int notify_fd[MAX_DOMS];
static int notify_fd_init;

static const char *shim_dir(void)
{
    const char *d = getenv("XS_SHIM_DIR");
    if (!d) {
        fprintf(stderr, "xenstore-shim: XS_SHIM_DIR is not set\n");
        abort();
    }
    return d;
}

typedef int (*open_fn)(const char *, int, ...);

static int real_open(const char *path, int flags, mode_t mode)
{
    static open_fn next;
    if (!next)
        next = (open_fn)dlsym(RTLD_NEXT, "open");
    return next(path, flags, mode);
}

static const char *redirect(const char *path, char *buf, size_t len)
{
    if (strcmp(path, "/proc/xen/xsd_port") == 0) {
        snprintf(buf, len, "%s/xsd_port", shim_dir());
        return buf;
    }
    if (strcmp(path, "/proc/xen/xsd_kva") == 0) {
        snprintf(buf, len, "%s/xsd_kva", shim_dir());
        return buf;
    }
    return path;
}

int open(const char *path, int flags, ...)
{
    char buf[4096];
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return real_open(redirect(path, buf, sizeof(buf)), flags, mode);
}

int open64(const char *path, int flags, ...)
{
    char buf[4096];
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return real_open(redirect(path, buf, sizeof(buf)), flags, mode);
}

/* libxenctrl */
xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger, unsigned open_flags)
{
    (void)logger; (void)dombuild_logger; (void)open_flags;
    return (xc_interface *)&dummy_handle;
}

int xc_interface_close(xc_interface *xch)
{
    (void)xch;
    return 0;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info)
{
    const char *dead = getenv("XS_SHIM_DEAD_FROM");
    (void)xch;
    if (max_doms == 0)
        return 0;
    if (dead && first_domid >= strtoul(dead, NULL, 10))
        return 0;
    memset(info, 0, sizeof(*info));
    info->domid = first_domid;
    return 1;
}

/* libxengnttab: the xenstore ring page of a domain is a shared file. */
xengnttab_handle *xengnttab_open(xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger; (void)open_flags;
    return (xengnttab_handle *)&dummy_handle;
}

int xengnttab_close(xengnttab_handle *xgt)
{
    (void)xgt;
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt; (void)nr_grants;
    return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
    char path[4096];
    void *p;
    int fd;
    (void)xgt; (void)ref;
    snprintf(path, sizeof(path), "%s/ring-%u", shim_dir(), domid);
    fd = real_open(path, O_RDWR | O_CREAT, 0600);
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, PAGE) != 0) {
        close(fd);
        return NULL;
    }
    p = mmap(NULL, PAGE, prot, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return munmap(start_address, (size_t)count * PAGE);
}

/* libxenevtchn: one FIFO wakes the daemon; one FIFO per domain wakes its proxy. */
xenevtchn_handle *xenevtchn_open(xentoollog_logger *logger, unsigned open_flags)
{
    char path[4096];
    (void)logger; (void)open_flags;
    snprintf(path, sizeof(path), "%s/evtchn", shim_dir());
    evtchn_fd = real_open(path, O_RDWR | O_NONBLOCK, 0);
    if (evtchn_fd < 0)
        return NULL;
    return (xenevtchn_handle *)&dummy_handle;
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    (void)xce;
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    (void)xce;
    return evtchn_fd;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    char buf[256];
    (void)xce;
    while (read(evtchn_fd, buf, sizeof(buf)) > 0)
        ;
    /* Never the VIRQ port: domains only die when the toolstack releases them. */
    return PORT_BASE - 1;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
    (void)xce; (void)virq;
    return VIRQ_PORT;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid, evtchn_port_t remote_port)
{
    (void)xce; (void)remote_port;
    return PORT_BASE + domid;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    char path[4096];
    uint32_t domid;
    (void)xce;
    if (port < PORT_BASE || port - PORT_BASE >= MAX_DOMS)
        return 0;
    domid = port - PORT_BASE;
    if (!notify_fd_init) {
        for (int i = 0; i < MAX_DOMS; i++)
            notify_fd[i] = -1;
        notify_fd_init = 1;
    }
    if (notify_fd[domid] < 0) {
        snprintf(path, sizeof(path), "%s/notify-%u", shim_dir(), domid);
        /* ENXIO: nobody listens yet; the proxy re-checks the ring when it starts. */
        notify_fd[domid] = real_open(path, O_WRONLY | O_NONBLOCK, 0);
        if (notify_fd[domid] < 0)
            return 0;
    }
    if (write(notify_fd[domid], "!", 1) < 0 && errno != EAGAIN) {
        close(notify_fd[domid]);
        notify_fd[domid] = -1;
    }
    return 0;
}
