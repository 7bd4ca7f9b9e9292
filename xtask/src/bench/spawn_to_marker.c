/*
 * spawn_to_marker: how long a command takes from its spawn to the first
 * MARKER on its stdout, and to its exit, on CLOCK_MONOTONIC. Built static
 * on the host by `cargo xtask bench` (xtask/src/bench/linux.rs) and run
 * where the VMMs run (inside L1 in the test bed).
 *
 *   spawn_to_marker LABEL MARKER TIMEOUT_S LOG CMD [ARGS...]
 *
 * CMD's stdin is /dev/null, its stdout a pipe read here (and copied to
 * LOG), its stderr LOG. The clock starts just before fork. Prints one line:
 *
 *   @@BOOT LABEL to_init_ms=T exit_ms=E status=S
 *
 * T is -1 when the marker never came; E is -1 and S is "timeout" when CMD
 * was killed at the time limit; S is the exit status, or "signal-N". When
 * the marker never came or the status is not 0, the end of LOG follows,
 * between the lines @@LOG-BEGIN and @@LOG-END, and the exit status is 1
 * (else 0; 2 for bad arguments).
 *
 * With SPAWN_QMP set to a QMP socket CMD serves (`cargo xtask soak`), a
 * CMD at its time limit is asked before it is killed what its vCPUs are
 * doing: each `;`-separated monitor line of SPAWN_HMP goes through QMP's
 * `human-monitor-command`, and the answers are printed (JSON string
 * escapes undone) between @@DUMP-BEGIN and @@DUMP-END, before @@BOOT.
 * Every read from the socket waits 5 s at most: a VMM that does not answer
 * costs 5 s per line and an "(no answer)".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* The last 4 KiB of the log, between marker lines. */
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

/* One line from the socket (up to '\n'), at most cap-1 bytes kept;
 * -1 on error or timeout. */
static ssize_t read_line(int fd, char *line, size_t cap)
{
	size_t n = 0;
	for (;;) {
		char c;
		ssize_t r = read(fd, &c, 1);
		if (r <= 0)
			return -1;
		if (c == '\n')
			break;
		if (n + 1 < cap)
			line[n++] = c;
	}
	line[n] = 0;
	return (ssize_t)n;
}

/* Writes the JSON string value after "return": with its escapes undone
 * (\u sequences are shown as '?'). */
static void print_return(const char *reply)
{
	const char *p = strstr(reply, "\"return\"");
	if (p)
		p = strchr(p + 8, '"');
	if (!p) {
		printf("%s\n", reply);
		return;
	}
	for (p++; *p && *p != '"'; p++) {
		if (*p != '\\') {
			putchar(*p);
			continue;
		}
		p++;
		switch (*p) {
		case 'n': putchar('\n'); break;
		case 't': putchar('\t'); break;
		case 'r': break;
		case 'u': putchar('?'); p += (strlen(p) >= 5) ? 4 : 0; break;
		case 0: return;
		default: putchar(*p);
		}
	}
	putchar('\n');
}

/* Asks the QMP socket at `path` each ';'-separated monitor line of
 * `lines` and prints the answers between @@DUMP-BEGIN and @@DUMP-END. */
static void dump_over_qmp(const char *path, const char *lines)
{
	static char reply[1 << 20];
	printf("@@DUMP-BEGIN\n");
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct timeval tv = { 5, 0 };
	if (fd < 0 || strlen(path) >= sizeof a.sun_path) {
		printf("(no socket)\n@@DUMP-END\n");
		if (fd >= 0)
			close(fd);
		return;
	}
	strcpy(a.sun_path, path);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	const char *caps = "{\"execute\":\"qmp_capabilities\"}\n";
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    read_line(fd, reply, sizeof reply) < 0 ||
	    write(fd, caps, strlen(caps)) < 0 || read_line(fd, reply, sizeof reply) < 0) {
		printf("(no QMP at %s: %s)\n@@DUMP-END\n", path, strerror(errno));
		close(fd);
		return;
	}
	char *copy = strdup(lines), *save = NULL;
	for (char *cmd = strtok_r(copy, ";", &save); cmd; cmd = strtok_r(NULL, ";", &save)) {
		char req[512];
		snprintf(req, sizeof req,
			 "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"%s\"}}\n",
			 cmd);
		printf("(vmm) %s\n", cmd);
		if (write(fd, req, strlen(req)) < 0) {
			printf("(cannot send)\n");
			break;
		}
		/* Skip events until the reply. */
		ssize_t n;
		while ((n = read_line(fd, reply, sizeof reply)) >= 0 && strstr(reply, "\"event\""))
			;
		if (n < 0) {
			printf("(no answer)\n");
			break;
		}
		print_return(reply);
	}
	free(copy);
	close(fd);
	printf("@@DUMP-END\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s LABEL MARKER TIMEOUT_S LOG CMD [ARGS...]\n", argv[0]);
		return 2;
	}
	const char *label = argv[1], *marker = argv[2];
	size_t mlen = strlen(marker);
	double limit_ms = atof(argv[3]) * 1e3;
	if (mlen == 0 || mlen > 256 || limit_ms <= 0) {
		fprintf(stderr, "%s: bad MARKER or TIMEOUT_S\n", argv[0]);
		return 2;
	}
	int log = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int p[2];
	if (log < 0 || null < 0 || pipe2(p, O_CLOEXEC) != 0) {
		perror("spawn_to_marker: setup");
		return 2;
	}

	double t0 = now_ms();
	pid_t pid = fork();
	if (pid < 0) {
		perror("spawn_to_marker: fork");
		return 2;
	}
	if (pid == 0) {
		dup2(null, 0);
		dup2(p[1], 1);
		dup2(log, 2);
		execvp(argv[5], argv + 5);
		perror("spawn_to_marker: exec");
		_exit(127);
	}
	close(p[1]);

	/* The last mlen-1 bytes of the previous read, then the new bytes. */
	char buf[65536 + 256];
	size_t carry = 0;
	double t_init = -1, t_exit = -1;
	int timed_out = 0;
	for (;;) {
		double left = limit_ms - (now_ms() - t0);
		if (left <= 0) {
			timed_out = 1;
			break;
		}
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		int r = poll(&pfd, 1, (int)left + 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue; /* the deadline is checked above */
		ssize_t n = read(p[0], buf + carry, 65536);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* EOF: the child closed its stdout (exited) */
		double t = now_ms();
		if (write(log, buf + carry, n) < 0) {
			/* The log is for diagnosis only. */
		}
		size_t have = carry + n;
		if (t_init < 0 && memmem(buf, have, marker, mlen))
			t_init = t - t0;
		carry = have < mlen - 1 ? have : mlen - 1;
		memmove(buf, buf + have - carry, carry);
	}

	int status = 0;
	if (!timed_out) {
		/* Stdout is closed; wait for the exit, within the time limit. */
		for (;;) {
			pid_t w = waitpid(pid, &status, WNOHANG);
			if (w == pid) {
				t_exit = now_ms() - t0;
				break;
			}
			if (now_ms() - t0 > limit_ms) {
				timed_out = 1;
				break;
			}
			struct timespec d = { 0, 100000 };
			nanosleep(&d, NULL);
		}
	}
	if (timed_out) {
		const char *qmp = getenv("SPAWN_QMP");
		if (qmp && *qmp)
			dump_over_qmp(qmp, getenv("SPAWN_HMP") ? getenv("SPAWN_HMP") : "info registers -a");
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
	}

	char st[32];
	if (timed_out)
		snprintf(st, sizeof st, "timeout");
	else if (WIFEXITED(status))
		snprintf(st, sizeof st, "%d", WEXITSTATUS(status));
	else
		snprintf(st, sizeof st, "signal-%d", WTERMSIG(status));
	printf("@@BOOT %s to_init_ms=%.3f exit_ms=%.3f status=%s\n", label, t_init, t_exit, st);
	if (t_init < 0 || strcmp(st, "0") != 0) {
		print_log_tail(argv[4]);
		return 1;
	}
	return 0;
}
