/*
 * xenblk's one native addon: a uv_poll watch on a file descriptor of Node's own event loop that
 * calls a JavaScript function, with nothing else per wake-up. koffi's equivalent
 * (koffi.node.poll) builds an object with three properties for every event; on the ring
 * benchmark that was half of each process's busy time, since every batch of requests or
 * responses is one wake-up.
 *
 * Built at `npm install` by native/addon/build.mjs with the C compiler alone: no node-gyp and no
 * headers. The few Node-API and libuv functions used are declared below from their documented,
 * ABI-stable signatures (Node-API: "ABI stable across Node.js versions"; libuv 1.x keeps
 * uv_handle_t's leading `data` field, the handle type numbers and UV_READABLE), and resolve
 * against the node executable when it loads the addon. Without a compiler the build is skipped
 * and native/fd-watch.ts falls back to koffi.
 *
 * Exports: start(fd, callback[, buffer[, echo]]) -> watch (an external), callback(result) runs
 * through napi_make_callback so that promise jobs and process.nextTick callbacks queued by it run
 * before the event loop goes on, as after any of Node's own I/O callbacks; ref(watch),
 * unref(watch), close(watch); kick(fd) writes the byte 1 to fd (a doorbell) and is 1 or a
 * negative errno.
 *
 * With a buffer (a Uint8Array, kept alive by the watch), each wake-up first does one read(2) of
 * up to its length into it, and with echo also writes what was read back to the fd, and the
 * callback gets the byte count (0 when there was nothing to read). That is what each of our fds
 * wants first when it turns readable: a doorbell FIFO or an eventfd is drained, and
 * /dev/xen/evtchn hands over the pending ports, which it unmasks when they are written back
 * (drivers/xen/evtchn.c). Done here, it costs no JavaScript-to-native call: a koffi call costs
 * ~0.4-0.6 us more than the system call itself on the development machine. A failed read or
 * write, or a poll error, is passed as a negative errno.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_ref__ *napi_ref;
typedef struct napi_callback_info__ *napi_callback_info;
typedef struct napi_async_context__ *napi_async_context;
typedef struct napi_handle_scope__ *napi_handle_scope;
typedef int napi_status; /* napi_ok is 0 */
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);
typedef void (*napi_finalize)(napi_env env, void *data, void *hint);

extern napi_status napi_get_cb_info(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
extern napi_status napi_get_value_int32(napi_env, napi_value, int32_t *);
extern napi_status napi_create_int32(napi_env, int32_t, napi_value *);
extern napi_status napi_get_global(napi_env, napi_value *);
extern napi_status napi_create_string_utf8(napi_env, const char *, size_t, napi_value *);
extern napi_status napi_create_reference(napi_env, napi_value, uint32_t, napi_ref *);
extern napi_status napi_delete_reference(napi_env, napi_ref);
extern napi_status napi_get_reference_value(napi_env, napi_ref, napi_value *);
extern napi_status napi_create_external(napi_env, void *, napi_finalize, void *, napi_value *);
extern napi_status napi_get_value_external(napi_env, napi_value, void **);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);
extern napi_status napi_throw_error(napi_env, const char *, const char *);
extern napi_status napi_open_handle_scope(napi_env, napi_handle_scope *);
extern napi_status napi_close_handle_scope(napi_env, napi_handle_scope);
extern napi_status napi_async_init(napi_env, napi_value, napi_value, napi_async_context *);
extern napi_status napi_async_destroy(napi_env, napi_async_context);
extern napi_status napi_make_callback(napi_env, napi_async_context, napi_value, napi_value, size_t, const napi_value *, napi_value *);
extern napi_status napi_is_exception_pending(napi_env, bool *);
extern napi_status napi_get_and_clear_last_exception(napi_env, napi_value *);
extern napi_status napi_fatal_exception(napi_env, napi_value);
extern napi_status napi_get_uv_event_loop(napi_env, void **);
extern napi_status napi_get_typedarray_info(napi_env, napi_value, int *, size_t *, void **, napi_value *, size_t *);
extern napi_status napi_get_value_bool(napi_env, napi_value, bool *);

typedef void (*uv_poll_cb)(void *handle, int status, int events);
typedef void (*uv_close_cb)(void *handle);
extern size_t uv_handle_size(int type);
extern int uv_poll_init(void *loop, void *handle, int fd);
extern int uv_poll_start(void *handle, int events, uv_poll_cb cb);
extern void uv_close(void *handle, uv_close_cb cb);
extern void uv_ref(void *handle);
extern void uv_unref(void *handle);

enum { UV_POLL_TYPE = 8, UV_READABLE_EVENT = 1 }; /* uv.h: UV_POLL in uv_handle_type; UV_READABLE */

struct watch {
	napi_env env;
	napi_ref callback;
	napi_async_context async;
	void *handle; /* a uv_poll_t of uv_handle_size(UV_POLL) bytes; its first field is `data` */
	bool closed;
	int fd;
	napi_ref buffer; /* the Uint8Array read into (NULL: no read) */
	uint8_t *data;   /* its bytes: V8 never moves an ArrayBuffer's backing store */
	size_t length;
	bool echo;
};

/* One read of what is pending, and the echo; the byte count or a negative errno. */
static int32_t take_input(struct watch *w)
{
	ssize_t n;
	do
		n = read(w->fd, w->data, w->length);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno; /* woken for nothing: fine */
	if (w->echo && n > 0) {
		ssize_t m;
		do
			m = write(w->fd, w->data, (size_t)n);
		while (m < 0 && errno == EINTR);
		if (m < 0)
			return -errno;
		if (m != n)
			return -EIO;
	}
	return (int32_t)n;
}

static void on_poll(void *handle, int status, int events)
{
	(void)events;
	struct watch *w = *(struct watch **)handle;
	if (w->closed)
		return;
	int32_t result = status;
	if (status == 0 && w->data != NULL)
		result = take_input(w);
	napi_env env = w->env;
	napi_handle_scope scope;
	if (napi_open_handle_scope(env, &scope) != 0)
		return;
	napi_value fn, recv, arg;
	if (napi_get_reference_value(env, w->callback, &fn) == 0 && fn != NULL && napi_get_global(env, &recv) == 0 /* napi_make_callback wants an object as receiver */ &&
	    napi_create_int32(env, result, &arg) == 0) {
		if (napi_make_callback(env, w->async, recv, fn, 1, &arg, NULL) != 0) {
			bool pending = false;
			napi_value err;
			if (napi_is_exception_pending(env, &pending) == 0 && pending && napi_get_and_clear_last_exception(env, &err) == 0)
				napi_fatal_exception(env, err); /* reported as an uncaught exception, as Node does for its own callbacks */
		}
	}
	napi_close_handle_scope(env, scope);
}

static void on_closed(void *handle)
{
	struct watch *w = *(struct watch **)handle;
	free(handle);
	free(w);
}

static struct watch *watch_arg(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	void *p = NULL;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 1 || napi_get_value_external(env, argv[0], &p) != 0 || p == NULL) {
		napi_throw_error(env, "EINVAL", "poll: not a watch");
		return NULL;
	}
	return p;
}

static napi_value start(napi_env env, napi_callback_info info)
{
	size_t argc = 4;
	napi_value argv[4];
	int32_t fd;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 2 || napi_get_value_int32(env, argv[0], &fd) != 0 || fd < 0) {
		napi_throw_error(env, "EINVAL", "poll.start(fd, callback): fd must be a descriptor");
		return NULL;
	}
	uint8_t *data = NULL;
	size_t length = 0;
	bool echo = false;
	if (argc >= 3) {
		int type = -1;
		void *p = NULL;
		if (napi_get_typedarray_info(env, argv[2], &type, &length, &p, NULL, NULL) != 0 || type != 1 /* napi_uint8_array */ || length == 0 || p == NULL) {
			napi_throw_error(env, "EINVAL", "poll.start(fd, callback, buffer): buffer must be a non-empty Uint8Array");
			return NULL;
		}
		data = p;
		if (argc >= 4 && napi_get_value_bool(env, argv[3], &echo) != 0) {
			napi_throw_error(env, "EINVAL", "poll.start(fd, callback, buffer, echo): echo must be a boolean");
			return NULL;
		}
	}
	void *loop = NULL;
	if (napi_get_uv_event_loop(env, &loop) != 0 || loop == NULL) {
		napi_throw_error(env, "ENOSYS", "poll.start: no event loop");
		return NULL;
	}
	struct watch *w = calloc(1, sizeof(*w));
	void *handle = calloc(1, uv_handle_size(UV_POLL_TYPE));
	if (w == NULL || handle == NULL) {
		free(w);
		free(handle);
		napi_throw_error(env, "ENOMEM", "poll.start: out of memory");
		return NULL;
	}
	w->env = env;
	w->handle = handle;
	w->fd = fd;
	w->data = data;
	w->length = length;
	w->echo = echo;
	int rc = uv_poll_init(loop, handle, fd);
	if (rc != 0) {
		free(w);
		free(handle);
		napi_throw_error(env, "EBADF", "poll.start: uv_poll_init refused the descriptor");
		return NULL;
	}
	*(struct watch **)handle = w; /* uv_handle_t.data: on_poll and on_closed find the watch there */
	napi_value name, ext;
	if (napi_create_reference(env, argv[1], 1, &w->callback) != 0 || (data != NULL && napi_create_reference(env, argv[2], 1, &w->buffer) != 0) ||
	    napi_create_string_utf8(env, "xenblk:poll", (size_t)-1, &name) != 0 ||
	    napi_async_init(env, NULL, name, &w->async) != 0 || napi_create_external(env, w, NULL, NULL, &ext) != 0) {
		w->closed = true;
		uv_close(handle, on_closed);
		napi_throw_error(env, "ENOMEM", "poll.start: cannot keep the callback");
		return NULL;
	}
	rc = uv_poll_start(handle, UV_READABLE_EVENT, on_poll);
	if (rc != 0) {
		w->closed = true;
		napi_delete_reference(env, w->callback);
		if (w->buffer != NULL)
			napi_delete_reference(env, w->buffer);
		napi_async_destroy(env, w->async);
		uv_close(handle, on_closed);
		napi_throw_error(env, "EBADF", "poll.start: uv_poll_start failed");
		return NULL;
	}
	return ext;
}

static napi_value ref(napi_env env, napi_callback_info info)
{
	struct watch *w = watch_arg(env, info);
	if (w != NULL && !w->closed)
		uv_ref(w->handle);
	return NULL;
}

static napi_value unref(napi_env env, napi_callback_info info)
{
	struct watch *w = watch_arg(env, info);
	if (w != NULL && !w->closed)
		uv_unref(w->handle);
	return NULL;
}

static napi_value close_watch(napi_env env, napi_callback_info info)
{
	struct watch *w = watch_arg(env, info);
	if (w == NULL || w->closed)
		return NULL;
	w->closed = true;
	napi_delete_reference(env, w->callback);
	if (w->buffer != NULL)
		napi_delete_reference(env, w->buffer);
	w->data = NULL;
	napi_async_destroy(env, w->async);
	uv_close(w->handle, on_closed); /* frees the handle and the watch once libuv is done with them */
	return NULL;
}

static napi_value kick(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	int32_t fd;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != 0) {
		napi_throw_error(env, "EINVAL", "kick(fd): fd must be a number");
		return NULL;
	}
	static const uint8_t one = 1;
	ssize_t n = write(fd, &one, 1);
	napi_value result;
	if (napi_create_int32(env, n == 1 ? 1 : n < 0 ? -errno : -EIO, &result) != 0)
		return NULL;
	return result;
}

static void export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb)
{
	napi_value fn;
	if (napi_create_function(env, name, (size_t)-1, cb, NULL, &fn) == 0)
		napi_set_named_property(env, exports, name, fn);
}

napi_value napi_register_module_v1(napi_env env, napi_value exports);
napi_value napi_register_module_v1(napi_env env, napi_value exports)
{
	export_fn(env, exports, "start", start);
	export_fn(env, exports, "ref", ref);
	export_fn(env, exports, "unref", unref);
	export_fn(env, exports, "close", close_watch);
	export_fn(env, exports, "kick", kick);
	return exports;
}
