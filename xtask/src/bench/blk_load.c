/*
 * blk_load: the disk load of `cargo xtask bench blk`, run inside the
 * guest (L2) on its virtio disk. Built static on the host by xtask
 * (xtask/src/bench/blk.rs); the guest has no C library.
 *
 *   blk_load DEVICE SEQ_MIB SEQ_MAX_S RAND_S
 *
 * DEVICE is opened O_RDWR | O_DIRECT. Four rows, one after the other:
 *
 *   seqwrite    1 MiB pwrite from offset 0, queue depth 1, SEQ_MIB MiB
 *               (or fewer if SEQ_MAX_S seconds pass first), then one
 *               fdatasync (timed with the writes);
 *   seqread     1 MiB pread from offset 0, the same amount;
 *   randread1   4 KiB pread at random 4 KiB-aligned offsets over the
 *               whole device, queue depth 1, for RAND_S seconds;
 *   randread32  the same with 32 reads in flight, through Linux AIO
 *               (io_setup/io_submit/io_getevents, raw system calls: a
 *               completed read is replaced at once), for RAND_S seconds.
 *
 * Each row prints "@@BLK-BEGIN row=NAME" just before its first I/O and
 * "@@BLK-END row=NAME ios=N bytes=B us=T" just after its last (T on
 * CLOCK_MONOTONIC), so that whoever reads the console can sample the
 * VMM's CPU time around the row. "@@BLK-DONE" ends a good run; an error
 * prints "@@BLK-ERROR what: why" and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SEQ_BLOCK (1 << 20)
#define RAND_BLOCK 4096
#define DEPTH 32

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void fail(const char *what)
{
	printf("@@BLK-ERROR %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void begin(const char *row)
{
	printf("@@BLK-BEGIN row=%s\n", row);
	fflush(stdout);
}

static void end(const char *row, uint64_t ios, uint64_t bytes, double us)
{
	printf("@@BLK-END row=%s ios=%llu bytes=%llu us=%.0f\n", row, (unsigned long long)ios,
	       (unsigned long long)bytes, us);
	fflush(stdout);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

/* A random 4 KiB-aligned offset below `size` (xorshift64). */
static off_t random_offset(uint64_t size)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (off_t)(rng % (size / RAND_BLOCK)) * RAND_BLOCK;
}

static void sequential(int fd, int write, uint64_t bytes, double max_us, char *buf)
{
	const char *row = write ? "seqwrite" : "seqread";
	uint64_t done = 0, ios = 0;
	begin(row);
	double t0 = now_us();
	while (done < bytes && now_us() - t0 < max_us) {
		ssize_t n = write ? pwrite(fd, buf, SEQ_BLOCK, done) : pread(fd, buf, SEQ_BLOCK, done);
		if (n != SEQ_BLOCK) {
			if (n >= 0)
				errno = EIO;
			fail(write ? "pwrite" : "pread");
		}
		done += SEQ_BLOCK;
		ios++;
	}
	if (write && fdatasync(fd) != 0)
		fail("fdatasync");
	end(row, ios, done, now_us() - t0);
}

static void random_qd1(int fd, uint64_t size, double us, char *buf)
{
	uint64_t ios = 0;
	begin("randread1");
	double t0 = now_us(), t = t0;
	while (t - t0 < us) {
		for (int i = 0; i < 16; i++) {
			if (pread(fd, buf, RAND_BLOCK, random_offset(size)) != RAND_BLOCK)
				fail("pread");
			ios++;
		}
		t = now_us();
	}
	end("randread1", ios, ios * RAND_BLOCK, t - t0);
}

static long sys_io_setup(unsigned n, aio_context_t *ctx)
{
	return syscall(SYS_io_setup, n, ctx);
}

static long sys_io_submit(aio_context_t ctx, long n, struct iocb **iocbs)
{
	return syscall(SYS_io_submit, ctx, n, iocbs);
}

static long sys_io_getevents(aio_context_t ctx, long min, long max, struct io_event *ev)
{
	return syscall(SYS_io_getevents, ctx, min, max, ev, NULL);
}

static void submit(aio_context_t ctx, struct iocb *cb, uint64_t size)
{
	cb->aio_offset = random_offset(size);
	struct iocb *list[1] = { cb };
	if (sys_io_submit(ctx, 1, list) != 1)
		fail("io_submit");
}

static void random_qd32(int fd, uint64_t size, double us, char *bufs)
{
	aio_context_t ctx = 0;
	static struct iocb cbs[DEPTH];
	struct io_event ev[DEPTH];
	if (sys_io_setup(DEPTH, &ctx) != 0)
		fail("io_setup");
	begin("randread32");
	double t0 = now_us(), t = t0;
	for (int i = 0; i < DEPTH; i++) {
		memset(&cbs[i], 0, sizeof cbs[i]);
		cbs[i].aio_fildes = fd;
		cbs[i].aio_lio_opcode = IOCB_CMD_PREAD;
		cbs[i].aio_buf = (uint64_t)(uintptr_t)(bufs + (size_t)i * RAND_BLOCK);
		cbs[i].aio_nbytes = RAND_BLOCK;
		cbs[i].aio_data = i;
		submit(ctx, &cbs[i], size);
	}
	uint64_t ios = 0;
	int in_flight = DEPTH, stopping = 0;
	while (in_flight > 0) {
		long n = sys_io_getevents(ctx, 1, DEPTH, ev);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("io_getevents");
		t = now_us();
		stopping = stopping || t - t0 >= us;
		for (long i = 0; i < n; i++) {
			if (ev[i].res != RAND_BLOCK) {
				errno = ev[i].res < 0 ? (int)-ev[i].res : EIO;
				fail("AIO read");
			}
			ios++;
			if (stopping)
				in_flight--;
			else
				submit(ctx, &cbs[ev[i].data], size);
		}
	}
	end("randread32", ios, ios * RAND_BLOCK, now_us() - t0);
	syscall(SYS_io_destroy, ctx);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s DEVICE SEQ_MIB SEQ_MAX_S RAND_S\n", argv[0]);
		return 2;
	}
	uint64_t seq = strtoull(argv[2], NULL, 10) << 20;
	double seq_max_us = atof(argv[3]) * 1e6, rand_us = atof(argv[4]) * 1e6;
	int fd = open(argv[1], O_RDWR | O_DIRECT);
	if (fd < 0)
		fail("open");
	uint64_t size = 0;
	if (ioctl(fd, BLKGETSIZE64, &size) != 0)
		fail("BLKGETSIZE64");
	if (size < SEQ_BLOCK || seq == 0 || seq_max_us <= 0 || rand_us <= 0) {
		errno = EINVAL;
		fail("arguments or device size");
	}
	if (seq > size)
		seq = size / SEQ_BLOCK * SEQ_BLOCK;
	char *buf;
	errno = posix_memalign((void **)&buf, 4096, SEQ_BLOCK);
	if (errno != 0)
		fail("posix_memalign");
	for (size_t i = 0; i < SEQ_BLOCK; i++)
		buf[i] = (char)(i * 7 + 1);
	printf("@@BLK-DEVICE %s bytes=%llu\n", argv[1], (unsigned long long)size);
	sequential(fd, 1, seq, seq_max_us, buf);
	sequential(fd, 0, seq, seq_max_us, buf);
	random_qd1(fd, size, rand_us, buf);
	random_qd32(fd, size, rand_us, buf);
	printf("@@BLK-DONE\n");
	fflush(stdout);
	return 0;
}
