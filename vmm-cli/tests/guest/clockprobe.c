/*
 * clockprobe: measures the PC's clock devices from inside a Linux guest,
 * against the guest's own CLOCK_MONOTONIC. Built static by the Linux tests
 * (vmm-cli/tests/linux.rs) and put in the test initramfs. Every result is
 * one "@@NAME value..." line on stdout.
 *
 *   clockprobe pit              PIT channel 2 counting rate; cost of one
 *                               PIT and one RTC register access
 *   clockprobe irqrate IRQ SEC  interrupts per second on IRQ, from
 *                               /proc/interrupts over SEC seconds
 *   clockprobe rtcpie HZ SEC    the RTC's own periodic interrupt (register
 *                               A rate, PIE) counted on IRQ 8
 *   clockprobe devrtc HZ        /dev/rtc0 periodic interrupts (RTC_IRQP_SET):
 *                               Linux's RTC core makes these with a kernel
 *                               timer, not the RTC's register A; prints the
 *                               rate, the periods counted and the reads
 *   clockprobe rtctime          the RTC's time (RTC_RD_TIME), Unix seconds
 *   clockprobe cmos INDEX       one CMOS byte, read through ports 0x70/0x71
 *   clockprobe cmoswrite INDEX VALUE   writes one (CMOS RAM survives a reset)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/rtc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void need_ports(void)
{
	if (iopl(3) != 0) {
		perror("iopl");
		exit(1);
	}
}

static unsigned ch2_count(void)
{
	outb(0x80, 0x43); /* latch channel 2 */
	unsigned lo = inb(0x42);
	unsigned hi = inb(0x42);
	return lo | hi << 8;
}

static unsigned char cmos_read(unsigned char index)
{
	outb(index, 0x70);
	return inb(0x71);
}

/*
 * One CMOS byte as the probe prints it: the kernel's own CMOS accesses
 * (its RTC interrupt handler reads register C) can land between our index
 * write and data read, and user space cannot close that window (Linux's
 * iopl(3) no longer allows cli). So read until two reads agree.
 */
static unsigned char cmos_read_settled(unsigned char index)
{
	unsigned char v = cmos_read(index);
	for (int i = 0; i < 8; i++) {
		unsigned char again = cmos_read(index);
		if (again == v)
			return v;
		v = again;
	}
	return v;
}

static void cmos_write(unsigned char index, unsigned char value)
{
	outb(index, 0x70);
	outb(value, 0x71);
}

/*
 * cmos_write that checks: the kernel's RTC interrupt handler can move the
 * index between our two port writes (it reads registers C and B), and the
 * value then lands elsewhere: left as it was, a periodic interrupt the
 * probe turned on stays on. So write until a settled read of the bits
 * `mask` gives them back (bit 7 of register A, update in progress, is
 * the RTC's own).
 */
static void cmos_write_checked(unsigned char index, unsigned char value, unsigned char mask)
{
	for (int i = 0; i < 8; i++) {
		cmos_write(index, value);
		if ((cmos_read_settled(index) & mask) == (value & mask))
			return;
	}
	fprintf(stderr, "clockprobe: CMOS register %#x did not take %#x\n", index, value);
	exit(1);
}

static void pit(void)
{
	need_ports();
	/* Gate on, speaker off; channel 2, word access, mode 0, from 0xFFFF:
	 * it counts down and wraps, so deltas mod 65536 add up. */
	outb((inb(0x61) & ~0x02) | 0x01, 0x61);
	outb(0xB0, 0x43);
	outb(0xFF, 0x42);
	outb(0xFF, 0x42);
	double a0 = now();
	unsigned prev = ch2_count();
	double a1 = now();
	unsigned long long ticks = 0;
	double b0, b1;
	do {
		b0 = now();
		unsigned c = ch2_count();
		b1 = now();
		ticks += (prev - c) & 0xFFFF;
		prev = c;
	} while (b1 - a0 < 2.0);
	/* The midpoints of the first and last reads bound the interval. */
	double secs = (b0 + b1) / 2 - (a0 + a1) / 2;
	printf("@@PIT_CH2_HZ %.1f\n", ticks / secs);

	const int n = 20000;
	double t0 = now();
	for (int i = 0; i < n; i++)
		inb(0x42);
	double t1 = now();
	printf("@@PIT_ACCESS_NS %.0f\n", (t1 - t0) / n * 1e9);
	t0 = now();
	for (int i = 0; i < n / 2; i++)
		cmos_read(0x0A);
	t1 = now();
	printf("@@RTC_ACCESS_NS %.0f\n", (t1 - t0) / n * 1e9);
}

static unsigned long long irq_count(int irq)
{
	FILE *f = fopen("/proc/interrupts", "r");
	char line[1024];
	unsigned long long total = 0;
	if (!f) {
		perror("/proc/interrupts");
		exit(1);
	}
	while (fgets(line, sizeof line, f)) {
		char *p = line;
		if (strtol(p, &p, 10) != irq || *p != ':')
			continue;
		p++;
		for (;;) {
			char *end;
			unsigned long long v = strtoull(p, &end, 10);
			if (end == p)
				break;
			total += v;
			p = end;
		}
		break;
	}
	fclose(f);
	return total;
}

static double irq_rate(int irq, double seconds)
{
	double t0 = now();
	unsigned long long c0 = irq_count(irq);
	struct timespec d = { (time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9) };
	nanosleep(&d, NULL);
	unsigned long long c1 = irq_count(irq);
	double t1 = now();
	return (c1 - c0) / (t1 - t0);
}

static void rtcpie(int hz, double seconds)
{
	need_ports();
	int rs = 1;
	while (rs < 15 && (32768 >> (rs - 1)) != hz)
		rs++;
	unsigned char a = cmos_read_settled(0x0A), b = cmos_read_settled(0x0B) & ~0x40;
	cmos_write_checked(0x0A, (a & 0x70) | rs, 0x7F);
	cmos_write_checked(0x0B, b | 0x40, 0xFF);
	printf("@@RTC_PIE %d %.2f\n", hz, irq_rate(8, seconds));
	cmos_write_checked(0x0B, b, 0xFF);
	cmos_write_checked(0x0A, a & 0x7F, 0x7F);
}

static void devrtc(int hz)
{
	int fd = open("/dev/rtc0", O_RDONLY);
	unsigned long data;
	if (fd < 0 || ioctl(fd, RTC_IRQP_SET, hz) != 0 || ioctl(fd, RTC_PIE_ON, 0) != 0) {
		perror("/dev/rtc0");
		exit(1);
	}
	read(fd, &data, sizeof data);
	/* Each read returns the periods since the last one in its upper bits
	 * (RTC_IRQF and the cause in the low byte): a reader that wakes late
	 * gets two or more at once. Count periods, not reads, so the rate is
	 * the interrupt's and not the reader's wake-ups'. */
	unsigned long periods = 0, reads = 0;
	double t0 = now();
	while (periods < (unsigned long)hz) {
		if (read(fd, &data, sizeof data) != sizeof data) {
			perror("/dev/rtc0 read");
			exit(1);
		}
		periods += data >> 8;
		reads++;
	}
	double t1 = now();
	ioctl(fd, RTC_PIE_OFF, 0);
	close(fd);
	printf("@@DEVRTC %d %.2f %lu %lu\n", hz, periods / (t1 - t0), periods, reads);
}

static void rtctime(void)
{
	int fd = open("/dev/rtc0", O_RDONLY);
	struct rtc_time tm;
	if (fd < 0 || ioctl(fd, RTC_RD_TIME, &tm) != 0) {
		perror("/dev/rtc0");
		exit(1);
	}
	close(fd);
	struct tm t = { .tm_sec = tm.tm_sec, .tm_min = tm.tm_min, .tm_hour = tm.tm_hour,
			.tm_mday = tm.tm_mday, .tm_mon = tm.tm_mon, .tm_year = tm.tm_year };
	printf("@@RTCTIME %lld\n", (long long)timegm(&t));
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "pit"))
		pit();
	else if (argc >= 4 && !strcmp(argv[1], "irqrate"))
		printf("@@IRQRATE %d %.2f\n", atoi(argv[2]), irq_rate(atoi(argv[2]), atof(argv[3])));
	else if (argc >= 4 && !strcmp(argv[1], "rtcpie"))
		rtcpie(atoi(argv[2]), atof(argv[3]));
	else if (argc >= 3 && !strcmp(argv[1], "devrtc"))
		devrtc(atoi(argv[2]));
	else if (argc >= 2 && !strcmp(argv[1], "rtctime"))
		rtctime();
	else if (argc >= 3 && !strcmp(argv[1], "cmos")) {
		need_ports();
		printf("@@CMOS %s %02x\n", argv[2], cmos_read_settled(strtol(argv[2], NULL, 0)));
	} else if (argc >= 4 && !strcmp(argv[1], "cmoswrite")) {
		need_ports();
		cmos_write(strtol(argv[2], NULL, 0), strtol(argv[3], NULL, 0));
	} else {
		fprintf(stderr, "usage: clockprobe pit|irqrate IRQ SEC|rtcpie HZ SEC|devrtc HZ|rtctime|cmos INDEX|cmoswrite INDEX VALUE\n");
		return 2;
	}
	return 0;
}
