/*
 * Oracle for test/conformance/device-number-libxl.test.ts: runs libxl's own compiled code on
 * one input per line and prints one answer per line.
 *
 * It is linked with objects extracted at test time from Debian libxen-dev's libxenlight.a (the
 * one defining libxl__device_disk_dev_number and libxl__devid_to_vdev, and the one defining
 * libxl__zalloc), plus generated stubs that trap for every other symbol those objects name, so
 * a call into anything but the functions under test aborts the run instead of lying.
 *
 * Input lines (the first character selects the call):
 *   N<name>  libxl__device_disk_dev_number(name, &disk, &partition)  -> "<ret> <disk> <partition>"
 *   R<text>  libxl__device_disk_dev_number(text, NULL, NULL)         -> "<ret>"
 *            (the path toolstacks take: libxl__device_from_disk passes NULL, NULL and treats
 *            -1 as "Invalid or unsupported virtual disk identifier")
 *   V<int>   libxl__devid_to_vdev(gc, int)                            -> "<name>"
 * Prototypes are libxl_internal.h's (Xen 4.17), which libxen-dev does not install.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int libxl__device_disk_dev_number(const char *virtpath, int *pdisk, int *ppartition);
char *libxl__devid_to_vdev(void *gc, int devid);

/*
 * A libxl__gc whose owner is NULL is not a "real" gc (libxl_internal.h libxl__gc_is_real):
 * libxl__ptr_add does not record allocations made through it, so the caller owns them. Zeroed
 * storage larger than the struct stands in for it; nothing but the owner field is read.
 */
static long fake_gc[16];

int main(void) {
  static char line[8192];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\n")] = 0;
    const char *arg = line + 1;
    switch (line[0]) {
    case 'N': {
      int disk = -99, partition = -99;
      int ret = libxl__device_disk_dev_number(arg, &disk, &partition);
      printf("%d %d %d\n", ret, disk, partition);
      break;
    }
    case 'R':
      printf("%d\n", libxl__device_disk_dev_number(arg, NULL, NULL));
      break;
    case 'V': {
      char *end;
      long v = strtol(arg, &end, 10);
      if (*arg == 0 || *end != 0) {
        fprintf(stderr, "oracle: bad V input '%s'\n", arg);
        return 2;
      }
      char *name = libxl__devid_to_vdev(fake_gc, (int)v);
      printf("%s\n", name);
      free(name); /* libxl__zalloc is calloc + libxl__ptr_add, a no-op for this gc */
      break;
    }
    default:
      fprintf(stderr, "oracle: bad input line '%s'\n", line);
      return 2;
    }
  }
  return fflush(stdout) == 0 ? 0 : 1;
}
