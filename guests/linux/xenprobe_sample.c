// SPDX-License-Identifier: GPL-2.0
/*
 * xenprobe_sample: a Linux kernel module that is a fuzz target, for the
 * Linux sample guest of xenprobe (guests/README.md, "The Linux guest").
 *
 * The code under test, xenprobe_target(), decodes a stream of control
 * records for an imaginary device, `type: u8, len: u8, value[len]` (a
 * missing length byte at the end of the input counts as 0):
 *
 *   0x01 OPEN    value[0]: which ops (0 plain, 1 checked)     -> OPEN
 *   0x02 AUTH    4-byte key, little-endian u32 0x6b21707a     -> AUTHED
 *   0x03 DATA    any bytes (AUTHED): counted
 *   0x04 RESET   (AUTHED) restarts the frame count
 *   0x05 STATS   (AUTHED) prints the average frame size
 *   0x06 NAME    prints the name of the session's ops
 *   0x07 MODE    value[0] (OPEN or AUTHED): selects one of 4 modes
 *   0x08 COMMIT  u16 LE journal sequence number (OPEN or AUTHED)
 *   0x09 BLOB    u32 LE CRC-32 of the rest, s64 LE offset, bytes (OPEN or
 *                AUTHED): stores the bytes at that offset of a scratch buffer
 *
 * Planted bugs (guests/BUGS.md, LX-1 .. LX-5), one per way the kernel
 * reports a crash: a NULL dereference (page fault oops), BUG_ON (invalid
 * opcode), a divide error, panic() and a non-canonical pointer (general
 * protection fault).
 *
 * The harness runs from the module's init and follows xenprobe's fuzz-target
 * ABI and KF/x's cpuid markers: xenprobe_fuzz_start() and
 * xenprobe_fuzz_end() each execute `cpuid` with EAX = 0x13371337, the start
 * one in KF/x's extended form (RSI = the input buffer, RCX = its capacity).
 * Module parameters: `input=HEX` fills the buffer for standalone runs;
 * `hold=1` makes init wait (up to 10 s) for a write to the `go` parameter
 * before the harness, so that /init can print the module's section
 * addresses first.
 */
#include <linux/completion.h>
#include <linux/init.h>
#include <linux/irqflags.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>
#include <linux/types.h>
#include <asm/unaligned.h>

#define XP_CAP 4096
#define XP_MAGIC 0x13371337u
#define XP_KEY 0x6b21707au /* "zp!k" */
#define XP_MODES 4

/* The fuzz-target ABI: in .data so that the bytes exist in the .ko file. */
__visible __used __section(".data") unsigned char xenprobe_input[XP_CAP];
__visible __used __section(".data") u64 xenprobe_input_len;
/* Set to 1 by a fuzz campaign: skip printing in the code under test. */
__visible __used __section(".data") u8 xenprobe_quiet;
__visible __used u64 xenprobe_runs, xenprobe_runs_ok;

static char *input;
module_param(input, charp, 0);
MODULE_PARM_DESC(input, "fuzz input as hex, copied into xenprobe_input");

static bool hold;
module_param(hold, bool, 0);
MODULE_PARM_DESC(hold, "wait for a write to the go parameter before the harness");

static DECLARE_COMPLETION(go_done);

static int go_set(const char *val, const struct kernel_param *kp)
{
	complete(&go_done);
	return 0;
}

static const struct kernel_param_ops go_ops = { .set = go_set };
module_param_cb(go, &go_ops, NULL, 0200);
MODULE_PARM_DESC(go, "write anything to start the harness (with hold=1)");

#define say(...)                          \
	do {                              \
		if (!READ_ONCE(xenprobe_quiet)) \
			pr_info(__VA_ARGS__);    \
	} while (0)

/* ---- the harness markers ---- */

__visible noinline void xenprobe_fuzz_start(void)
{
	unsigned long a = XP_MAGIC, c = XP_CAP, s = (unsigned long)xenprobe_input;
	unsigned long b, d;

	/* KF/x's extended harness: RSI = buffer, RCX = its size. */
	asm volatile("cpuid"
		     : "+a"(a), "+c"(c), "+S"(s), "=b"(b), "=d"(d)
		     :
		     : "memory");
	WRITE_ONCE(xenprobe_runs, xenprobe_runs + 1);
}

__visible noinline void xenprobe_fuzz_end(void)
{
	unsigned long a = XP_MAGIC, b, c = 0, d;

	asm volatile("cpuid" : "+a"(a), "+c"(c), "=b"(b), "=d"(d) : : "memory");
	WRITE_ONCE(xenprobe_runs_ok, xenprobe_runs_ok + 1);
}

/* ---- the code under test ---- */

enum xp_state { XP_IDLE, XP_OPEN, XP_AUTHED };

struct xp_ops {
	const char *name;
	unsigned int frame_limit;
};

static const struct xp_ops xp_plain = { .name = "plain", .frame_limit = 64 };
static const struct xp_ops xp_checked = { .name = "checked", .frame_limit = 16 };
static const char *const xp_mode_names[XP_MODES] = { "off", "rx", "tx", "duplex" };

struct xp_session {
	enum xp_state state;
	const struct xp_ops *ops; /* NULL until OPEN */
	unsigned int mode;
	u16 seq;
	u64 frames;
	u64 bytes;
	u8 scratch[64];
};

/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32()), bit by bit. */
static noinline u32 xp_crc32(const u8 *p, size_t n)
{
	u32 crc = ~0u;
	size_t i;
	int k;

	for (i = 0; i < n; i++) {
		crc ^= p[i];
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1));
	}
	return ~crc;
}

static u64 xp_last_avg;

static noinline void xp_stats(struct xp_session *s)
{
	/* volatile: the compiler must emit a real `div` with this divisor. */
	volatile u64 frames = s->frames;
	u64 avg;

	if (!s->bytes)
		return;
	/* Planted bug LX-4: RESET zeroed frames but not bytes. */
	avg = s->bytes / frames;
	WRITE_ONCE(xp_last_avg, avg); /* computed even when quiet */
	say("xenprobe_sample: %llu bytes in %llu frames, %llu on average\n",
	    s->bytes, s->frames, avg);
}

static noinline void xp_blob(struct xp_session *s, const u8 *v, size_t len)
{
	u32 crc;
	s64 off;
	size_t n, i;

	if (len < 13)
		return;
	crc = get_unaligned_le32(v);
	if (xp_crc32(v + 4, len - 4) != crc) /* compared as a whole */
		return;
	off = (s64)get_unaligned_le64(v + 4);
	n = len - 12;
	/* Planted bug LX-5: a signed check; a negative offset passes. */
	if (off + (s64)n > (s64)sizeof(s->scratch))
		return;
	/* Byte stores, not memcpy(): FORTIFY_SOURCE would catch it first. */
	for (i = 0; i < n; i++)
		((volatile u8 *)s->scratch)[off + i] = v[12 + i];
}

static noinline void xp_commit(struct xp_session *s, u16 seq)
{
	/* Planted bug LX-3: a rollback is treated as fatal corruption. */
	if (s->seq && seq < s->seq)
		panic("xenprobe_sample: journal rollback (seq %u after %u)", seq, s->seq);
	s->seq = seq;
}

static noinline int xp_record(struct xp_session *s, u8 type, const u8 *v, size_t len)
{
	switch (type) {
	case 0x01: /* OPEN */
		if (s->state != XP_IDLE || len < 1)
			return -1;
		s->ops = (v[0] & 1) ? &xp_checked : &xp_plain;
		s->state = XP_OPEN;
		break;
	case 0x02: /* AUTH */
		if (s->state != XP_OPEN || len != 4)
			return -1;
		if (get_unaligned_le32(v) != XP_KEY)
			return -1;
		s->state = XP_AUTHED;
		break;
	case 0x03: /* DATA */
		if (s->state != XP_AUTHED)
			return -1;
		if (s->frames >= s->ops->frame_limit)
			return -1;
		s->frames++;
		s->bytes += len;
		break;
	case 0x04: /* RESET */
		if (s->state != XP_AUTHED)
			return -1;
		s->frames = 0; /* but not s->bytes: LX-4 */
		break;
	case 0x05: /* STATS */
		if (s->state != XP_AUTHED)
			return -1;
		xp_stats(s);
		break;
	case 0x06: { /* NAME */
		/* Planted bug LX-1: ops is NULL before OPEN. */
		const char *name = READ_ONCE(s->ops->name);

		say("xenprobe_sample: ops %s\n", name);
		break;
	}
	case 0x07: /* MODE */
		if (s->state == XP_IDLE || len < 1)
			return -1;
		s->mode = v[0];
		/* Planted bug LX-2: "validated by the caller", which it is not. */
		BUG_ON(s->mode >= XP_MODES);
		say("xenprobe_sample: mode %s\n", xp_mode_names[s->mode]);
		break;
	case 0x08: /* COMMIT */
		if (s->state == XP_IDLE || len != 2)
			return -1;
		xp_commit(s, get_unaligned_le16(v));
		break;
	case 0x09: /* BLOB */
		if (s->state == XP_IDLE)
			return -1;
		xp_blob(s, v, len);
		break;
	default:
		return -1;
	}
	return 0;
}

__visible noinline int xenprobe_target(const u8 *data, size_t len)
{
	struct xp_session s = {};
	size_t pos = 0;
	int bad = 0;

	while (pos < len) {
		u8 type = data[pos];
		size_t n = pos + 1 < len ? data[pos + 1] : 0;
		const u8 *v = data + pos + 2;

		if (pos + 2 + n > len)
			n = pos + 2 < len ? len - pos - 2 : 0;
		if (xp_record(&s, type, v, n))
			bad++;
		pos += 2 + n;
	}
	return bad;
}

/* ---- the harness ---- */

static int __init xenprobe_sample_init(void)
{
	unsigned long flags;
	u64 len;
	int bad;

	if (input) {
		size_t n = min_t(size_t, strlen(input) / 2, XP_CAP);

		if (hex2bin(xenprobe_input, input, n)) {
			pr_err("xenprobe_sample: input= is not hex\n");
			return -EINVAL;
		}
		xenprobe_input_len = n;
	}
	if (hold && !wait_for_completion_timeout(&go_done, 10 * HZ))
		pr_warn("xenprobe_sample: no go within 10 s; starting anyway\n");
	pr_info("xenprobe_sample: fuzz start input=%px cap=%u len=%llu\n",
		xenprobe_input, XP_CAP, xenprobe_input_len);

	local_irq_save(flags);
	xenprobe_fuzz_start();
	len = READ_ONCE(xenprobe_input_len);
	if (len > XP_CAP)
		len = XP_CAP;
	bad = xenprobe_target(xenprobe_input, len);
	xenprobe_fuzz_end();
	local_irq_restore(flags);

	pr_info("xenprobe_sample: fuzz done: no crash (%d records rejected)\n", bad);
	return 0;
}

static void __exit xenprobe_sample_exit(void)
{
}

module_init(xenprobe_sample_init);
module_exit(xenprobe_sample_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("xenprobe sample fuzz target (planted bugs: guests/BUGS.md)");
