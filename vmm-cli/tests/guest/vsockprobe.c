/*
 * vsockprobe: both ends of the vsock test (linux_vsock.rs), static so that
 * it runs in the guest's busybox initramfs and in L1 alike.
 *
 *   vsockprobe echo-server PORT            AF_VSOCK listener on PORT (any
 *                                          CID); echoes one connection
 *   vsockprobe vsock-client CID PORT BYTES connects to CID:PORT (retrying),
 *                                          sends BYTES of a pattern, checks
 *                                          the echo (GUEST_ECHO to CID 2,
 *                                          HOST_ECHO to a guest)
 *   vsockprobe uds-client PATH PORT BYTES  host: the VMM's Unix socket,
 *                                          "CONNECT PORT\n", "OK n\n"
 *                                          (retrying), then as vsock-client
 *   vsockprobe uds-echo PATH               host: a Unix listener at PATH;
 *                                          echoes one connection
 *
 * Each prints one @@ line saying how it went; the test reads them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static unsigned char pattern(unsigned long i)
{
	return (unsigned char)((i * 7) ^ (i >> 8) ^ (i >> 17));
}

static int write_all(int fd, const unsigned char *b, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Echoes fd until end of file; the bytes echoed. */
static long echo(int fd)
{
	unsigned char buf[65536];
	long total = 0;
	for (;;) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (write_all(fd, buf, (size_t)r) < 0)
			return -1;
		total += r;
	}
	shutdown(fd, SHUT_WR);
	return total;
}

/* Sends `bytes` of the pattern (a child process) while reading the echo;
 * prints the verdict with `tag`. */
static int exchange(int fd, long bytes, const char *tag)
{
	pid_t child = fork();
	if (child < 0) {
		printf("@@%s_BAD fork %s\n", tag, strerror(errno));
		return 1;
	}
	if (child == 0) {
		unsigned char buf[65536];
		long sent = 0;
		while (sent < bytes) {
			size_t n = sizeof buf;
			if ((long)n > bytes - sent)
				n = (size_t)(bytes - sent);
			for (size_t i = 0; i < n; i++)
				buf[i] = pattern((unsigned long)(sent + (long)i));
			if (write_all(fd, buf, n) < 0)
				_exit(1);
			sent += (long)n;
		}
		shutdown(fd, SHUT_WR);
		_exit(0);
	}
	unsigned char buf[65536];
	long got = 0, bad = -1;
	for (;;) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			printf("@@%s_BAD read after %ld: %s\n", tag, got, strerror(errno));
			break;
		}
		if (r == 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			if (bad < 0 && buf[i] != pattern((unsigned long)(got + i)))
				bad = got + i;
		got += r;
	}
	int status = 0;
	waitpid(child, &status, 0);
	if (got == bytes && bad < 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		printf("@@%s_OK %ld\n", tag, got);
		return 0;
	}
	printf("@@%s_BAD got %ld of %ld, first difference at %ld, sender %d\n", tag, got,
	       bytes, bad, status);
	return 1;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int unix_addr(struct sockaddr_un *a, const char *path)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof a->sun_path)
		return -1;
	strcpy(a->sun_path, path);
	return 0;
}

static int echo_server(unsigned port)
{
	int l = socket(AF_VSOCK, SOCK_STREAM, 0);
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port,
				 .svm_cid = VMADDR_CID_ANY };
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4) < 0) {
		printf("@@SERVER_BAD %s\n", strerror(errno));
		return 1;
	}
	printf("@@SERVER_LISTENING %u\n", port);
	fflush(stdout);
	int c = accept(l, NULL, NULL);
	if (c < 0) {
		printf("@@SERVER_BAD accept %s\n", strerror(errno));
		return 1;
	}
	long n = echo(c);
	close(c);
	printf("@@SERVER_ECHOED %u %ld\n", port, n);
	return n < 0;
}

static int vsock_client(unsigned cid, unsigned port, long bytes)
{
	/* The guest reaches the host (CID 2); anyone else reaches a guest. */
	const char *tag = cid == 2 ? "GUEST_ECHO" : "HOST_ECHO";
	const char *who = cid == 2 ? "GUEST" : "HOST";
	double start = now();
	for (;;) {
		int s = socket(AF_VSOCK, SOCK_STREAM, 0);
		struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port,
					 .svm_cid = cid };
		if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
			printf("@@%s_CONNECTED to CID %u after %.1f s\n", who, cid, now() - start);
			int r = exchange(s, bytes, tag);
			close(s);
			return r;
		}
		int e = errno;
		if (s >= 0)
			close(s);
		if (now() - start > 120) {
			printf("@@%s_BAD connect %s\n", tag, strerror(e));
			return 1;
		}
		usleep(300000);
	}
}

/* Reads one line (at most n-1 bytes) byte by byte. */
static int read_line(int fd, char *line, size_t n)
{
	size_t i = 0;
	while (i + 1 < n) {
		char ch;
		ssize_t r = read(fd, &ch, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		line[i++] = ch;
		if (ch == '\n')
			break;
	}
	line[i] = 0;
	return (int)i;
}

static int uds_client(const char *path, unsigned port, long bytes)
{
	double start = now();
	int tries = 0;
	for (;;) {
		struct sockaddr_un a;
		char line[64];
		int s = socket(AF_UNIX, SOCK_STREAM, 0);
		tries++;
		if (s >= 0 && unix_addr(&a, path) == 0 &&
		    connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
			dprintf(s, "CONNECT %u\n", port);
			if (read_line(s, line, sizeof line) > 0 && strncmp(line, "OK ", 3) == 0) {
				printf("@@HOST_CONNECTED %s after %.1f s, %d tries\n",
				       strtok(line, "\n"), now() - start, tries);
				int r = exchange(s, bytes, "HOST_ECHO");
				close(s);
				return r;
			}
		}
		if (s >= 0)
			close(s);
		if (now() - start > 240) {
			printf("@@HOST_ECHO_BAD no OK after %d tries\n", tries);
			return 1;
		}
		usleep(500000);
	}
}

static int uds_echo(const char *path)
{
	struct sockaddr_un a;
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0 || unix_addr(&a, path) < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 ||
	    listen(l, 4) < 0) {
		printf("@@UDS_ECHO_BAD %s\n", strerror(errno));
		return 1;
	}
	int c = accept(l, NULL, NULL);
	if (c < 0) {
		printf("@@UDS_ECHO_BAD accept %s\n", strerror(errno));
		return 1;
	}
	long n = echo(c);
	close(c);
	unlink(path);
	printf("@@UDS_ECHOED %ld\n", n);
	return n < 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && strcmp(argv[1], "echo-server") == 0)
		return echo_server((unsigned)strtoul(argv[2], NULL, 0));
	if (argc == 5 && strcmp(argv[1], "vsock-client") == 0)
		return vsock_client((unsigned)strtoul(argv[2], NULL, 0),
				    (unsigned)strtoul(argv[3], NULL, 0), strtol(argv[4], NULL, 0));
	if (argc == 5 && strcmp(argv[1], "uds-client") == 0)
		return uds_client(argv[2], (unsigned)strtoul(argv[3], NULL, 0),
				  strtol(argv[4], NULL, 0));
	if (argc == 3 && strcmp(argv[1], "uds-echo") == 0)
		return uds_echo(argv[2]);
	fprintf(stderr, "usage: vsockprobe echo-server PORT | vsock-client CID PORT BYTES | "
			"uds-client PATH PORT BYTES | uds-echo PATH\n");
	return 2;
}
