/*
 * qmpclient: a minimal QMP client for the test bed's L1, where there is no
 * Python. Connects to a Unix socket, checks the greeting, negotiates, then
 * runs its steps in order, printing every line it receives as "@@QMP ..."
 * and the time of each step as "@@QMPT <step> <CLOCK_MONOTONIC seconds>".
 *
 *   qmpclient SOCKET STEP...
 *     COMMAND            {"execute": COMMAND}; waits for its reply
 *     {...}              this request as it is (a command with arguments);
 *                        waits for its reply
 *     line:TEXT          waits for a line from the server holding TEXT
 *     sleep:SECONDS      sleeps
 *     event:NAME         waits for event NAME
 *     file:PATH:TEXT     waits until file PATH contains TEXT
 *
 * Exits 1 if a step fails or takes more than STEP_LIMIT seconds.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The longest any one step may take (a nested boot is in the first). */
#define STEP_LIMIT 120

static FILE *in;
static int fd;

/* Events that arrived while a step waited for something else (QMP sends a
 * command's events before its reply), for a later event:NAME step. */
static char seen[64][64];
static int nseen;

static void remember(const char *l)
{
	const char *e = strstr(l, "\"event\"");
	if (!e || nseen == 64)
		return;
	e = strchr(e + 7, '"');
	if (!e)
		return;
	e++;
	const char *end = strchr(e, '"');
	if (!end || end - e >= 64)
		return;
	memcpy(seen[nseen], e, end - e);
	seen[nseen][end - e] = 0;
	nseen++;
}

static int take_seen(const char *name)
{
	for (int i = 0; i < nseen; i++) {
		if (!strcmp(seen[i], name)) {
			memmove(seen[i], seen[i + 1], (nseen - i - 1) * sizeof seen[0]);
			nseen--;
			return 1;
		}
	}
	return 0;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* One line from the server, printed; NULL at EOF. */
static char *line(void)
{
	static char buf[65536];
	if (!fgets(buf, sizeof buf, in))
		return NULL;
	printf("@@QMP %s", buf);
	fflush(stdout);
	return buf;
}

static int send_command(const char *cmd)
{
	char req[2048];
	int n = cmd[0] == '{'
		? snprintf(req, sizeof req, "%s\n", cmd)
		: snprintf(req, sizeof req, "{\"execute\": \"%s\"}\n", cmd);
	if (n < 0 || n >= (int)sizeof req)
		return -1;
	if (write(fd, req, n) != n)
		return -1;
	for (;;) {
		char *l = line();
		if (!l)
			return -1;
		if (strstr(l, "\"return\""))
			return 0;
		if (strstr(l, "\"error\""))
			return -1;
		remember(l);
	}
}

static int wait_event(const char *name)
{
	if (take_seen(name))
		return 0;
	char want[256];
	snprintf(want, sizeof want, "\"event\": \"%s\"", name);
	char want2[256];
	snprintf(want2, sizeof want2, "\"event\":\"%s\"", name);
	for (;;) {
		char *l = line();
		if (!l)
			return -1;
		if (strstr(l, want) || strstr(l, want2))
			return 0;
		remember(l);
	}
}

static int wait_line(const char *text)
{
	for (;;) {
		char *l = line();
		if (!l)
			return -1;
		if (strstr(l, text))
			return 0;
		remember(l);
	}
}

static int file_has(const char *path, const char *text)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	static char buf[1 << 20];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	return strstr(buf, text) != NULL;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) {
		fprintf(stderr, "usage: qmpclient SOCKET STEP...\n");
		return 2;
	}
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
	double start = now();
	for (;;) {
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
			break;
		close(fd);
		if (now() - start > 60) {
			perror("connect");
			return 1;
		}
		usleep(50000);
	}
	struct timeval limit = { STEP_LIMIT, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
	in = fdopen(dup(fd), "r");
	char *greeting = line();
	if (!greeting || !strstr(greeting, "\"QMP\"") || send_command("qmp_capabilities")) {
		fprintf(stderr, "qmpclient: no QMP session\n");
		return 1;
	}
	for (int i = 2; i < argc; i++) {
		const char *step = argv[i];
		int rc = 0;
		if (!strncmp(step, "sleep:", 6)) {
			double s = atof(step + 6);
			struct timespec d = { (time_t)s, (long)((s - (time_t)s) * 1e9) };
			nanosleep(&d, NULL);
		} else if (!strncmp(step, "line:", 5)) {
			rc = wait_line(step + 5);
		} else if (!strncmp(step, "event:", 6)) {
			rc = wait_event(step + 6);
		} else if (!strncmp(step, "file:", 5)) {
			char path[256];
			const char *colon = strchr(step + 5, ':');
			if (!colon || colon - (step + 5) >= (long)sizeof path) {
				rc = -1;
			} else {
				memcpy(path, step + 5, colon - (step + 5));
				path[colon - (step + 5)] = 0;
				double t0 = now();
				while (!file_has(path, colon + 1)) {
					if (now() - t0 > STEP_LIMIT) {
						rc = -1;
						break;
					}
					usleep(20000);
				}
			}
		} else {
			rc = send_command(step);
		}
		printf("@@QMPT %s %.3f\n", step, now());
		if (rc) {
			fprintf(stderr, "qmpclient: step %s failed\n", step);
			printf("@@QMPFAIL %s\n", step);
			return 1;
		}
	}
	return 0;
}
