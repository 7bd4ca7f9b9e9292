/*
 * blk_host: runs one VMM whose guest runs blk_load (blk_load.c) and
 * samples the VMM's CPU time around each of the guest's rows. Built
 * static on the host by `cargo xtask bench blk` (xtask/src/bench/blk.rs)
 * and run where the VMMs run (inside L1 in the test bed).
 *
 *   blk_host LABEL TIMEOUT_S LOG CMD [ARGS...]
 *
 * CMD's stdin is /dev/null, its stdout a pipe read here line by line (and
 * copied to LOG), its stderr LOG. On the guest's "@@BLK-BEGIN row=NAME"
 * line the VMM's utime + stime and guest_time (/proc/PID/stat: every
 * thread, live or ended) are read; on its "@@BLK-END row=NAME ..." line
 * again, and one line is printed:
 *
 *   @@BLK LABEL row=NAME ios=N bytes=B us=T cpu_ms=C guest_ms=G
 *
 * (the guest's fields, then C, the VMM's CPU time over the row, and G,
 * the part of it its vCPUs spent in guest mode; -1 when unreadable). At the
 * end: "@@BLKRUN LABEL status=S" where S is the exit status, "signal-N"
 * or "timeout"; when the guest did not print "@@BLK-DONE" or the status
 * is not 0, the end of LOG follows between "@@LOG-BEGIN" and
 * "@@LOG-END" and the exit status is 1 (else 0; 2 for bad arguments).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* utime + stime of `pid` in ms into *cpu, and guest_time (the part spent
 * running a vCPU in guest mode, counted in utime) into *guest; -1 each
 * when unreadable. */
static void cpu_ms(pid_t pid, double *cpu, double *guest)
{
	char path[64], buf[2048];
	*cpu = *guest = -1;
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	/* Fields after the command name's closing parenthesis: state is
	 * field 3, utime 14, stime 15, guest_time 43. */
	char *p = strrchr(buf, ')');
	if (!p)
		return;
	unsigned long long v[52] = { 0 };
	int field = 3;
	char *save = NULL;
	for (char *t = strtok_r(p + 1, " \n", &save); t && field < 52;
	     t = strtok_r(NULL, " \n", &save), field++)
		v[field] = strtoull(t, NULL, 10);
	if (field <= 43)
		return;
	double tick_ms = 1e3 / sysconf(_SC_CLK_TCK);
	*cpu = (v[14] + v[15]) * tick_ms;
	*guest = v[43] * tick_ms;
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

static const char *label;
static pid_t child;
static double row_cpu = -1, row_guest = -1;
static int done;

/* One line of the VMM's stdout, without its end of line. */
static void on_line(char *line)
{
	char *cr = strchr(line, '\r');
	if (cr)
		*cr = 0;
	char *b = strstr(line, "@@BLK-BEGIN ");
	char *e = strstr(line, "@@BLK-END ");
	if (b) {
		cpu_ms(child, &row_cpu, &row_guest);
	} else if (e) {
		double c, g;
		cpu_ms(child, &c, &g);
		int ok = row_cpu >= 0 && c >= 0;
		printf("@@BLK %s %s cpu_ms=%.1f guest_ms=%.1f\n", label, e + strlen("@@BLK-END "),
		       ok ? c - row_cpu : -1, ok ? g - row_guest : -1);
		fflush(stdout);
		row_cpu = row_guest = -1;
	} else if (strstr(line, "@@BLK-DONE")) {
		done = 1;
	}
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: %s LABEL TIMEOUT_S LOG CMD [ARGS...]\n", argv[0]);
		return 2;
	}
	label = argv[1];
	double limit_ms = atof(argv[2]) * 1e3;
	if (limit_ms <= 0) {
		fprintf(stderr, "%s: bad TIMEOUT_S\n", argv[0]);
		return 2;
	}
	int log = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int p[2];
	if (log < 0 || null < 0 || pipe2(p, O_CLOEXEC) != 0) {
		perror("blk_host: setup");
		return 2;
	}
	double t0 = now_ms();
	child = fork();
	if (child < 0) {
		perror("blk_host: fork");
		return 2;
	}
	if (child == 0) {
		dup2(null, 0);
		dup2(p[1], 1);
		dup2(log, 2);
		execvp(argv[4], argv + 4);
		perror("blk_host: exec");
		_exit(127);
	}
	close(p[1]);

	char line[4096];
	size_t have = 0;
	int timed_out = 0;
	for (;;) {
		double left = limit_ms - (now_ms() - t0);
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
				on_line(line);
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
			if (now_ms() - t0 > limit_ms) {
				timed_out = 1;
				break;
			}
			struct timespec d = { 0, 1000000 };
			nanosleep(&d, NULL);
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
	printf("@@BLKRUN %s status=%s done=%d\n", label, st, done);
	if (!done || strcmp(st, "0") != 0) {
		print_log_tail(argv[3]);
		return 1;
	}
	return 0;
}
