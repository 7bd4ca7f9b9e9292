/*
 * net_load: the network load of `cargo xtask bench net`. One program,
 * built static on the host by xtask (xtask/src/bench/net.rs), run on both
 * ends of the tap: in the guest (L2, which has no C library) as the
 * client, and where the VMMs run (L1 in the test bed) as the host side,
 * which starts the VMM, serves the guest's rows and samples the VMM's CPU
 * time around each.
 *
 *   net_load client ADDR PORT SECONDS
 *   net_load host LABEL TIMEOUT_S LOG LISTEN TAP ADDR/PREFIX CMD [ARGS...]
 *
 * The same rows run over TCP on the tap or over vsock (the `bench net`
 * vsock rows): ADDR is an IPv4 address or vsock:CID (AF_VSOCK, CID 2 for
 * the host); LISTEN is a TCP port, vsock:PORT (an AF_VSOCK listener: the
 * host side of vhost-vsock) or unix:PATH (a Unix listener at PATH: the
 * host side of a virtio-vsock-pci with uds=, which connects the guest's
 * CID 2 port P to PATH_P); TAP and ADDR/PREFIX are "-" for those.
 *
 * The client (the guest) connects to ADDR:PORT once per row (retrying
 * the first connection for up to 90 s while the link comes up) and sends
 * an 8-byte request: the row's letter and the seconds it lasts. Rows:
 *
 *   tx  'T': the guest writes 128 KiB at a time for SECONDS, then shuts
 *       its side down; the host counts the bytes to the end of stream;
 *   rx  'R': the host writes for SECONDS, then shuts down; the guest
 *       counts;
 *   rr  'P': request/response, TCP_NODELAY both ways: the guest writes
 *       one byte and waits for the host's one-byte answer, for SECONDS,
 *       then shuts down.
 *
 * At the end of each row the side that did not end the stream sends its
 * count (8 bytes: bytes received, or pairs answered) to the other, which
 * checks it against its own: a difference is an error (tx and rr: the
 * guest checks the host's; rx: the host checks the guest's). The guest
 * prints "@@NET-GUEST row=NAME ours=N [peer=M]" per row and "@@NET-DONE"
 * at the end; an error prints "@@NET-ERROR what: why" and exits 1.
 *
 * The host side forks CMD (the VMM; stdin /dev/null, stdout a pipe read
 * here line by line and copied to LOG, stderr LOG) and, on a thread,
 * listens on PORT, waits for interface TAP (made by the VMM), gives it
 * ADDR/PREFIX and brings it up, then serves the rows one connection at a
 * time. Each row is timed on this side, from the request read to the last
 * byte (tx, rr: the guest's end of stream; rx: the guest's count received,
 * so every byte has arrived), and the VMM's utime + stime and guest_time
 * (/proc/PID/stat, every thread) are read at both ends. One line per row:
 *
 *   @@NET LABEL row=NAME bytes=B trans=N us=T cpu_ms=C guest_ms=G vcpu_ms=V helpers=H other_ms=O
 *
 * (B the stream's bytes, N the request/response pairs, C and G -1 when
 * unreadable, V the part of C its vCPU threads used, found by name (-1
 * when none is), H the kernel's vhost workers counted in C, O the CPU time
 * of every other task in L1 over the row: the work that competed with
 * the VMM for L1's CPUs). An error on this side prints "@@NET-ERROR LABEL what: why"
 * (and no line for its row). At the end: "@@NETRUN LABEL status=S done=D
 * errors=E" (S the exit status, "signal-N" or "timeout"; D 1 when the
 * guest printed "@@NET-DONE"; E the errors on this side); unless 0, 1 and
 * 0, the end of LOG follows between "@@LOG-BEGIN" and "@@LOG-END" and the
 * exit status is 1 (else 0; 2 for bad arguments).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "l1_proc.h"

#define CHUNK (128 * 1024)

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void sleep_ms(int ms)
{
	struct timespec d = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&d, NULL);
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* TCP_NODELAY on a TCP socket (vsock and Unix sockets send at once). */
static void nodelay(int fd)
{
	int one = 1;
	struct sockaddr_storage a;
	socklen_t len = sizeof a;
	if (getsockname(fd, (struct sockaddr *)&a, &len) == 0 && a.ss_family == AF_INET)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- the client (in the guest) ---- */

static void fail(const char *what)
{
	printf("@@NET-ERROR %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void mismatch(const char *row, uint64_t ours, uint64_t peer)
{
	printf("@@NET-ERROR %s: counted %llu here, the peer %llu\n", row, (unsigned long long)ours,
	       (unsigned long long)peer);
	fflush(stdout);
	exit(1);
}

/* Where the client connects: an IPv4 address or a vsock CID. */
static struct sockaddr_storage server;
static socklen_t server_len;

/* A connection to the server carrying request `op` for `seconds`;
 * retried until `patience_s` pass. */
static int open_row(char op, uint32_t seconds, int patience_s)
{
	double deadline = now_us() + patience_s * 1e6;
	for (;;) {
		int fd = socket(server.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			fail("socket");
		if (connect(fd, (struct sockaddr *)&server, server_len) == 0) {
			unsigned char req[8] = { (unsigned char)op };
			memcpy(req + 4, &seconds, 4);
			if (op == 'P')
				nodelay(fd);
			if (write_all(fd, req, sizeof req) != 0)
				fail("request");
			return fd;
		}
		int e = errno;
		close(fd);
		if (now_us() > deadline) {
			errno = e;
			fail("connect");
		}
		sleep_ms(500);
	}
}

static uint64_t peer_count(int fd, const char *row)
{
	uint64_t n;
	if (read_all(fd, &n, sizeof n) != 0) {
		printf("@@NET-ERROR %s: no count from the peer\n", row);
		fflush(stdout);
		exit(1);
	}
	return n;
}

static void guest_line(const char *row, uint64_t ours, uint64_t peer)
{
	printf("@@NET-GUEST row=%s ours=%llu peer=%llu\n", row, (unsigned long long)ours,
	       (unsigned long long)peer);
	fflush(stdout);
	if (ours != peer)
		mismatch(row, ours, peer);
}

static int client(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s client ADDR PORT SECONDS\n", argv[0]);
		return 2;
	}
	uint32_t secs = (uint32_t)atoi(argv[4]);
	int bad;
	if (strncmp(argv[2], "vsock:", 6) == 0) {
		struct sockaddr_vm *vm = (struct sockaddr_vm *)&server;
		vm->svm_family = AF_VSOCK;
		vm->svm_cid = (unsigned)atoi(argv[2] + 6);
		vm->svm_port = (unsigned)atoi(argv[3]);
		server_len = sizeof *vm;
		bad = vm->svm_cid == 0;
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)&server;
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)atoi(argv[3]));
		server_len = sizeof *in;
		bad = inet_pton(AF_INET, argv[2], &in->sin_addr) != 1;
	}
	if (bad || secs == 0) {
		fprintf(stderr, "%s: bad ADDR or SECONDS\n", argv[0]);
		return 2;
	}
	/* A peer gone is an error printed, not a silent SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);
	static char buf[CHUNK];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (char)(i % 251);

	/* tx: the guest sends. */
	int fd = open_row('T', secs, 90);
	uint64_t sent = 0;
	double end = now_us() + secs * 1e6;
	while (now_us() < end) {
		if (write_all(fd, buf, sizeof buf) != 0)
			fail("tx write");
		sent += sizeof buf;
	}
	if (shutdown(fd, SHUT_WR) != 0)
		fail("tx shutdown");
	guest_line("tx", sent, peer_count(fd, "tx"));
	close(fd);

	/* rx: the host sends. */
	fd = open_row('R', secs, 10);
	uint64_t got = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("rx read");
		if (n == 0)
			break;
		got += (uint64_t)n;
	}
	/* The host has shut its side: it checks the count. */
	if (write_all(fd, &got, sizeof got) != 0)
		fail("rx count");
	printf("@@NET-GUEST row=rx ours=%llu\n", (unsigned long long)got);
	fflush(stdout);
	close(fd);

	/* rr: one byte each way per transaction. */
	fd = open_row('P', secs, 10);
	uint64_t trans = 0;
	end = now_us() + secs * 1e6;
	while (now_us() < end) {
		char c = (char)trans;
		if (write_all(fd, &c, 1) != 0 || read_all(fd, &c, 1) != 0)
			fail("rr");
		trans++;
	}
	if (shutdown(fd, SHUT_WR) != 0)
		fail("rr shutdown");
	guest_line("rr", trans, peer_count(fd, "rr"));
	close(fd);

	printf("@@NET-DONE\n");
	fflush(stdout);
	return 0;
}

/* ---- the host side (where the VMM runs) ---- */

static const char *label;
static pid_t child;
/* Errors on this side (each printed as it happens). */
static volatile int errors;

/* The CPU time in ms that L1's other tasks used between snapshots `before` and `now`
 * (a task new since counts whole); when over 100 ms, the busiest five are
 * named on a line of their own:
 *   @@NETOTHER LABEL row=NAME [TID COMM MS]... */
static double other_ms(const struct l1_tasks *before, const struct l1_tasks *now,
		       const struct helpers *h, const char *row)
{
	static long used[MAX_TASKS_ALL];
	double tick_ms = 1e3 / sysconf(_SC_CLK_TCK), sum = 0;
	for (int i = 0; i < now->n; i++) {
		int ours = now->pid[i] == child || now->pid[i] == getpid();
		for (int k = 0; k < h->n; k++)
			ours |= now->pid[i] == h->pid[k];
		used[i] = ours ? 0 : now->ticks[i];
		for (int j = 0; j < before->n && used[i]; j++)
			if (before->tid[j] == now->tid[i]) {
				used[i] -= before->ticks[j];
				break;
			}
		if (used[i] > 0)
			sum += used[i] * tick_ms;
	}
	if (sum > 100) {
		printf("@@NETOTHER %s row=%s", label, row);
		for (int k = 0; k < 5; k++) {
			int best = -1;
			for (int i = 0; i < now->n; i++)
				if (used[i] > 0 && (best < 0 || used[i] > used[best]))
					best = i;
			if (best < 0)
				break;
			printf(" [%d %s %.0f]", (int)now->tid[best], now->comm[best],
			       used[best] * tick_ms);
			used[best] = 0;
		}
		printf("\n");
	}
	return sum;
}

/* A row measured on this side. */
struct sample {
	double t0, c0, g0;
	struct helpers h;
	struct l1_tasks *others;
};

static void row_begin(struct sample *s)
{
	static struct l1_tasks before;
	s->others = &before;
	l1_tasks(s->others);
	find_helpers(child, s->others, &s->h);
	cpu_ms(child, &s->h, &s->c0, &s->g0);
	s->t0 = now_us();
}

static void row_end(const struct sample *s, const char *row, uint64_t bytes, uint64_t trans)
{
	static struct l1_tasks after;
	double us = now_us() - s->t0, c, g;
	cpu_ms(child, &s->h, &c, &g);
	l1_tasks(&after);
	int ok = s->c0 >= 0 && c >= 0;
	double other = other_ms(s->others, &after, &s->h, row);
	long v0 = vcpu_ticks(s->others, child), v1 = vcpu_ticks(&after, child);
	double vcpu = v0 >= 0 && v1 >= v0 ? (v1 - v0) * 1e3 / sysconf(_SC_CLK_TCK) : -1;
	printf("@@NET %s row=%s bytes=%llu trans=%llu us=%.0f cpu_ms=%.1f guest_ms=%.1f "
	       "vcpu_ms=%.1f helpers=%d other_ms=%.0f\n",
	       label, row, (unsigned long long)bytes, (unsigned long long)trans, us,
	       ok ? c - s->c0 : -1, ok ? g - s->g0 : -1, vcpu, s->h.n, other);
	fflush(stdout);
}

static void host_error(const char *what)
{
	errors++;
	printf("@@NET-ERROR %s %s: %s\n", label, what, strerror(errno));
	fflush(stdout);
}

/* One connection: the request, the row, the counts. */
static void serve(int fd)
{
	static char buf[CHUNK];
	unsigned char req[8];
	if (read_all(fd, req, sizeof req) != 0) {
		host_error("request");
		return;
	}
	uint32_t secs;
	memcpy(&secs, req + 4, 4);
	struct sample s;
	if (req[0] == 'T') {
		uint64_t got = 0;
		row_begin(&s);
		for (;;) {
			ssize_t n = read(fd, buf, sizeof buf);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				host_error("tx read");
				return;
			}
			if (n == 0)
				break;
			got += (uint64_t)n;
		}
		row_end(&s, "tx", got, 0);
		if (write_all(fd, &got, sizeof got) != 0)
			host_error("tx count");
	} else if (req[0] == 'R') {
		for (size_t i = 0; i < sizeof buf; i++)
			buf[i] = (char)(i % 241);
		uint64_t sent = 0, got;
		row_begin(&s);
		double end = s.t0 + secs * 1e6;
		while (now_us() < end) {
			if (write_all(fd, buf, sizeof buf) != 0) {
				host_error("rx write");
				return;
			}
			sent += sizeof buf;
		}
		if (shutdown(fd, SHUT_WR) != 0 || read_all(fd, &got, sizeof got) != 0) {
			host_error("rx count");
			return;
		}
		if (got != sent) {
			printf("@@NET-ERROR %s rx: sent %llu, the guest counted %llu\n", label,
			       (unsigned long long)sent, (unsigned long long)got);
			fflush(stdout);
			errors++;
			return;
		}
		row_end(&s, "rx", sent, 0);
	} else if (req[0] == 'P') {
		nodelay(fd);
		uint64_t trans = 0;
		char c;
		row_begin(&s);
		for (;;) {
			ssize_t n = read(fd, &c, 1);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				host_error("rr read");
				return;
			}
			if (n == 0)
				break;
			if (write_all(fd, &c, 1) != 0) {
				host_error("rr write");
				return;
			}
			trans++;
		}
		row_end(&s, "rr", 0, trans);
		if (write_all(fd, &trans, sizeof trans) != 0)
			host_error("rr count");
	} else {
		printf("@@NET-ERROR %s bad request %d\n", label, req[0]);
		fflush(stdout);
		errors++;
	}
}

struct server_args {
	const char *listen;
	const char *tap;
	const char *addr;
};

/* The listening socket LISTEN names (see the top), or -1. */
static int listener(const char *spec)
{
	int one = 1;
	if (strncmp(spec, "vsock:", 6) == 0) {
		struct sockaddr_vm vm = { .svm_family = AF_VSOCK,
					  .svm_cid = VMADDR_CID_ANY,
					  .svm_port = (unsigned)atoi(spec + 6) };
		int ls = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (ls < 0 || bind(ls, (struct sockaddr *)&vm, sizeof vm) != 0 || listen(ls, 4) != 0)
			return -1;
		return ls;
	}
	if (strncmp(spec, "unix:", 5) == 0) {
		struct sockaddr_un un = { .sun_family = AF_UNIX };
		if (strlen(spec + 5) >= sizeof un.sun_path)
			return -1;
		strcpy(un.sun_path, spec + 5);
		unlink(un.sun_path);
		int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (ls < 0 || bind(ls, (struct sockaddr *)&un, sizeof un) != 0 || listen(ls, 4) != 0)
			return -1;
		return ls;
	}
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(spec)) };
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
	    bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 4) != 0)
		return -1;
	return ls;
}

/* Waits for the tap the VMM makes and gives it its address: 0, or -1
 * (said). */
static int tap_up(const struct server_args *a)
{
	char path[128], cmd[256];
	snprintf(path, sizeof path, "/sys/class/net/%s", a->tap);
	struct stat st;
	int i = 0;
	while (stat(path, &st) != 0 && i++ < 1200)
		sleep_ms(50);
	snprintf(cmd, sizeof cmd, "ip addr add %s dev %s && ip link set %s up", a->addr, a->tap,
		 a->tap);
	if (system(cmd) != 0) {
		printf("@@NET-ERROR %s tap %s: cannot set it up (%s)\n", label, a->tap, cmd);
		fflush(stdout);
		errors++;
		return -1;
	}
	return 0;
}

static void *server_thread(void *p)
{
	const struct server_args *a = p;
	int ls = listener(a->listen);
	if (ls < 0) {
		host_error("listen");
		return NULL;
	}
	/* Over TCP, the VMM makes the tap: give it the address. */
	if (strcmp(a->tap, "-") != 0 && tap_up(a) != 0)
		return NULL;
	for (;;) {
		int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			host_error("accept");
			return NULL;
		}
		serve(fd);
		close(fd);
	}
}

static void print_log_tail(const char *path)
{
	char tail[4096];
	ssize_t n = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		off_t size = lseek(fd, 0, SEEK_END);
		off_t from = size > (off_t)sizeof tail ? size - (off_t)sizeof tail : 0;
		if (lseek(fd, from, SEEK_SET) == from)
			n = read(fd, tail, sizeof tail);
		close(fd);
	}
	printf("@@LOG-BEGIN\n");
	fflush(stdout);
	if (n > 0 && write(1, tail, n) < 0) {
		/* Nothing more to do. */
	}
	printf("\n@@LOG-END\n");
}

static int host(int argc, char **argv)
{
	if (argc < 9) {
		fprintf(stderr,
			"usage: %s host LABEL TIMEOUT_S LOG LISTEN TAP ADDR/PREFIX CMD [ARGS...]\n",
			argv[0]);
		return 2;
	}
	label = argv[2];
	double limit_ms = atof(argv[3]) * 1e3;
	static struct server_args a;
	a.listen = argv[5];
	a.tap = argv[6];
	a.addr = argv[7];
	if (limit_ms <= 0 || argv[5][0] == 0) {
		fprintf(stderr, "%s: bad TIMEOUT_S or LISTEN\n", argv[0]);
		return 2;
	}
	int log = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int p[2];
	if (log < 0 || null < 0 || pipe2(p, O_CLOEXEC) != 0) {
		perror("net_load: setup");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	double t0 = now_us() / 1e3;
	child = fork();
	if (child < 0) {
		perror("net_load: fork");
		return 2;
	}
	if (child == 0) {
		signal(SIGPIPE, SIG_DFL);
		dup2(null, 0);
		dup2(p[1], 1);
		dup2(log, 2);
		execvp(argv[8], argv + 8);
		perror("net_load: exec");
		_exit(127);
	}
	close(p[1]);
	pthread_t th;
	if (pthread_create(&th, NULL, server_thread, &a) != 0) {
		printf("@@NET-ERROR %s: no server thread\n", label);
		fflush(stdout);
		errors++;
	}

	char line[4096];
	size_t have = 0;
	int timed_out = 0, done = 0;
	for (;;) {
		double left = limit_ms - (now_us() / 1e3 - t0);
		if (left <= 0) {
			timed_out = 1;
			break;
		}
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		int r = poll(&pfd, 1, (int)left + 1);
		if (r <= 0)
			continue; /* EINTR or the deadline, checked above */
		char buf[4096];
		ssize_t n = read(p[0], buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* EOF: the VMM closed its stdout (exited) */
		if (write(log, buf, n) < 0) {
			/* The log is for diagnosis only. */
		}
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] == '\n' || have == sizeof line - 1) {
				line[have] = 0;
				if (strstr(line, "@@NET-DONE"))
					done = 1;
				have = 0;
			}
			if (buf[i] != '\n')
				line[have++] = buf[i];
		}
	}

	int status = 0;
	if (!timed_out) {
		for (;;) {
			if (waitpid(child, &status, WNOHANG) == child)
				break;
			if (now_us() / 1e3 - t0 > limit_ms) {
				timed_out = 1;
				break;
			}
			sleep_ms(1);
		}
	}
	if (timed_out) {
		kill(child, SIGKILL);
		waitpid(child, &status, 0);
	}
	char st[32];
	if (timed_out)
		snprintf(st, sizeof st, "timeout");
	else if (WIFEXITED(status))
		snprintf(st, sizeof st, "%d", WEXITSTATUS(status));
	else
		snprintf(st, sizeof st, "signal-%d", WTERMSIG(status));
	int errs = errors;
	printf("@@NETRUN %s status=%s done=%d errors=%d\n", label, st, done, errs);
	fflush(stdout);
	if (!done || errs || strcmp(st, "0") != 0) {
		print_log_tail(argv[4]);
		fflush(stdout);
		_exit(1);
	}
	/* The server thread may be blocked in accept: leave without it. */
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "client") == 0)
		return client(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "host") == 0)
		return host(argc, argv);
	fprintf(stderr, "usage: %s client ... | %s host ... (see net_load.c)\n", argv[0],
		argv[0]);
	return 2;
}
