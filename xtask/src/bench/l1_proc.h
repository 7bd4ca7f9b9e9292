/*
 * l1_proc.h: what the `bench` loads that run in L1 read from /proc about
 * the VMM under test and everything else that ran: a task's CPU time and
 * guest time, every task in L1 with its name, the kernel's vhost workers
 * that serve the VMM, and the VMM's vCPU threads. Included by net_load.c
 * (one static C program; no other file is linked).
 */
#ifndef L1_PROC_H
#define L1_PROC_H

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* The numeric fields of a /proc/.../stat line `buf` (cut up in place)
 * into v[3..max): those after the command name's closing parenthesis,
 * state being field 3, utime 14, stime 15, guest_time 43. Returns one
 * past the last field read (3 when none). */
static int stat_fields(char *buf, unsigned long long *v, int max)
{
	char *p = strrchr(buf, ')');
	int field = 3;
	char *save = NULL;
	if (!p)
		return field;
	for (char *t = strtok_r(p + 1, " \n", &save); t && field < max;
	     t = strtok_r(NULL, " \n", &save), field++)
		v[field] = strtoull(t, NULL, 10);
	return field;
}

/* The text of file `path` into buf (NUL-terminated): its length, or -1
 * when unreadable or empty. */
static ssize_t read_text(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return n;
}

/* utime + stime of task `pid` (a process: all its threads) in ms into
 * *cpu, and guest_time (the part spent running a vCPU in guest mode,
 * counted in utime) into *guest; -1 each when unreadable. */
static void stat_ms(pid_t pid, double *cpu, double *guest)
{
	char path[64], buf[2048];
	*cpu = *guest = -1;
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if (read_text(path, buf, sizeof buf) < 0)
		return;
	unsigned long long v[52] = { 0 };
	if (stat_fields(buf, v, 52) <= 43)
		return;
	double tick_ms = 1e3 / sysconf(_SC_CLK_TCK);
	*cpu = (v[14] + v[15]) * tick_ms;
	*guest = v[43] * tick_ms;
}

/* The CPU time of every task in L1 (10 ms ticks), to tell what else ran
 * during a row: everything but the VMM's threads, its vhost workers and
 * this program's own. */
#define MAX_TASKS_ALL 4096
struct l1_tasks {
	int n;
	pid_t pid[MAX_TASKS_ALL], tid[MAX_TASKS_ALL];
	long ticks[MAX_TASKS_ALL];
	char comm[MAX_TASKS_ALL][16];
};

static void l1_tasks(struct l1_tasks *a)
{
	char path[600], buf[1024];
	a->n = 0;
	DIR *d = opendir("/proc");
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof path, "/proc/%s/task", e->d_name);
		DIR *t = opendir(path);
		if (!t)
			continue;
		for (struct dirent *f; (f = readdir(t)) && a->n < MAX_TASKS_ALL;) {
			if (f->d_name[0] < '1' || f->d_name[0] > '9')
				continue;
			snprintf(path, sizeof path, "/proc/%s/task/%s/stat", e->d_name, f->d_name);
			if (read_text(path, buf, sizeof buf) < 0)
				continue;
			char *l = strchr(buf, '('), *r = strrchr(buf, ')');
			if (!l || !r || r < l)
				continue;
			int i = a->n++;
			snprintf(a->comm[i], sizeof a->comm[i], "%.*s", (int)(r - l - 1), l + 1);
			unsigned long long v[16] = { 0 };
			stat_fields(buf, v, 16);
			a->pid[i] = (pid_t)strtol(e->d_name, NULL, 10);
			a->tid[i] = (pid_t)strtol(f->d_name, NULL, 10);
			a->ticks[i] = (long)(v[14] + v[15]);
		}
		closedir(t);
	}
	closedir(d);
}

/* The kernel's vhost workers that serve the VMM. Before Linux 6.4 each
 * vhost device moves its data on a kernel thread of its own, named
 * vhost-TID after the thread that owned the device (VHOST_SET_OWNER):
 * not one of the VMM's threads, so its /proc/PID/stat leaves that work
 * out. They are found by name and their time added to the VMM's (from
 * 6.4 the worker is a thread of the VMM's own and none is found). */
#define MAX_HELPERS 16
struct helpers {
	int n;
	pid_t pid[MAX_HELPERS];
};

static void find_helpers(pid_t vmm, const struct l1_tasks *a, struct helpers *h)
{
	h->n = 0;
	for (int i = 0; i < a->n && h->n < MAX_HELPERS; i++) {
		if (strncmp(a->comm[i], "vhost-", 6) != 0 || a->pid[i] != a->tid[i])
			continue;
		pid_t owner = (pid_t)strtol(a->comm[i] + 6, NULL, 10);
		for (int j = 0; j < a->n; j++)
			if (a->pid[j] == vmm && a->tid[j] == owner) {
				h->pid[h->n++] = a->pid[i];
				break;
			}
	}
}

/* The VMM's CPU time (stat_ms) plus its vhost workers' (all kernel
 * time, none in guest mode); -1 each when the VMM's is unreadable. */
static void cpu_ms(pid_t vmm, const struct helpers *h, double *cpu, double *guest)
{
	stat_ms(vmm, cpu, guest);
	for (int i = 0; i < h->n && *cpu >= 0; i++) {
		double c, g;
		stat_ms(h->pid[i], &c, &g);
		if (c >= 0)
			*cpu += c;
	}
}

/* The CPU ticks the VMM's vCPU threads have used, from snapshot `a`: the
 * threads named as a vCPU's ("vcpu N" ours, "CPU N/KVM" QEMU's). What the
 * VMM spends outside them is its data path and main loop. -1 when no
 * thread of the VMM has such a name. */
static long vcpu_ticks(const struct l1_tasks *a, pid_t vmm)
{
	long sum = 0;
	int found = 0;
	for (int i = 0; i < a->n; i++) {
		if (a->pid[i] != vmm)
			continue;
		const char *c = a->comm[i];
		int cpu = strncmp(c, "vcpu ", 5) == 0 ||
			  (strncmp(c, "CPU ", 4) == 0 && strstr(c, "/KVM") != NULL);
		if (cpu) {
			sum += a->ticks[i];
			found = 1;
		}
	}
	return found ? sum : -1;
}

#endif
