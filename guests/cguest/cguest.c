/* cguest: a small freestanding 64-bit C guest (PVH) for xenprobe's fuzzer,
 * built with the host's gcc like any user's guest would be (see
 * xtask/src/guests/cguest.rs for the command line, boot.S for the boot).
 *
 * It follows the fuzz-target ABI of guests/README.md with two differences
 * that a user's guest may well have:
 *   - the input length is a uint32_t, and the word right after it, `flags`,
 *     is data the guest uses: a fuzzer that wrote the length as 8 bytes
 *     would zero it (the guest then calls cg_crash(CG_E_FLAGS));
 *   - its crash sink is its own cg_crash(code), not xenprobe_crash.
 *
 * The code under test, cg_decode(), reads records `TYPE LEN PAYLOAD[LEN]`.
 * Planted bugs (each calls cg_crash with its code):
 *   CG-1, code 1: a NAME record longer than the 8-byte name field
 *                 (e.g. 01 09 + 9 bytes);
 *   CG-2, code 9: an OPTIONS record holding the retired option byte 0xA5
 *                 (e.g. 07 01 a5);
 *   CG-3, code 3: a VERSION record of 0x1337 after a NAME record
 *                 (e.g. 01 01 41 04 02 37 13).
 * Its own input (run standalone) decodes cleanly and powers off. */

#include <stddef.h>
#include <stdint.h>

/* The guest's functions under test and the ABI's functions: never inlined,
 * and no interprocedural assumptions (the harness writes the input while
 * xenprobe_fuzz_start is stopped). */
#define CG_FN __attribute__((noinline, noipa, used))

enum {
    CG_E_NAME = 1,     /* CG-1 */
    CG_E_VERSION = 3,  /* CG-3 */
    CG_E_OPTION = 9,   /* CG-2 */
    CG_E_FLAGS = 100,  /* `flags` was overwritten: a fuzzer bug, not ours */
};

/* flags: the high half is a fixed tag, bit 0 makes unknown records an error. */
#define CG_FLAGS_TAG 0xc6a60000u
#define CG_FLAGS_TAG_MASK 0xffff0000u
#define CG_F_STRICT 0x1u

#define SAMPLE_INPUT                                                        \
    { 0x01, 0x05, 'h', 'e', 'l', 'l', 'o', 0x04, 0x02, 0x02, 0x00, 0x07,    \
      0x02, 0x01, 0x02 }

/* The fuzz-target ABI, in .data so that an image file can carry an input.
 * The linker script keeps the length and `flags` together, in this order. */
__attribute__((section(".data.xenprobe_input"), used, aligned(64)))
uint8_t xenprobe_input[4096] = SAMPLE_INPUT;
__attribute__((section(".data.xenprobe_input_len"), used, aligned(8)))
volatile uint32_t xenprobe_input_len = sizeof((uint8_t[])SAMPLE_INPUT);
__attribute__((section(".data.cg_flags"), used))
volatile uint32_t flags = CG_FLAGS_TAG | CG_F_STRICT;

static volatile unsigned long cg_runs, cg_runs_ok;
/* What the last decode returned (records, or a negative error). */
volatile long cg_result;

extern uint8_t hypercall_page[4096];

/* ---- Xen: the hypercall page and SCHEDOP_shutdown ---- */

static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* Finds Xen's CPUID leaves and has Xen fill the hypercall page. */
static int xen_init(void)
{
    for (uint32_t base = 0x40000000; base < 0x40010000; base += 0x100) {
        uint32_t a, b, c, d;
        cpuid(base, &a, &b, &c, &d);
        /* "XenVMMXenVMM" */
        if (b == 0x566e6558 && c == 0x65584d4d && d == 0x4d4d566e && a >= base + 2) {
            cpuid(base + 2, &a, &b, &c, &d);
            uint64_t page = (uint64_t)(uintptr_t)hypercall_page;
            __asm__ volatile("wrmsr" ::"c"(b), "a"((uint32_t)page), "d"((uint32_t)(page >> 32)));
            return 1;
        }
    }
    return 0;
}

static int have_xen;

static long hypercall2(unsigned nr, unsigned long a1, unsigned long a2)
{
    long ret;
    __asm__ volatile("call *%[entry]"
                     : "=a"(ret), "+D"(a1), "+S"(a2)
                     : [entry] "r"(hypercall_page + nr * 32)
                     : "memory", "rcx", "rdx", "r8", "r9", "r10", "r11");
    return ret;
}

enum { SHUTDOWN_POWEROFF = 0, SHUTDOWN_CRASH = 3 };

static __attribute__((noreturn)) void shutdown(unsigned reason)
{
    struct { unsigned reason; } s = { reason };
    if (have_xen)
        hypercall2(29 /* __HYPERVISOR_sched_op */, 2 /* SCHEDOP_shutdown */,
                   (unsigned long)&s);
    for (;;)
        __asm__ volatile("hlt");
}

/* ---- The ABI's functions and the guest's crash sink ---- */

CG_FN void xenprobe_fuzz_start(void) { cg_runs++; }
CG_FN void xenprobe_fuzz_end(void) { cg_runs_ok++; }

/* The guest's own crash sink (config: sinks = ["cg_crash"]). */
CG_FN __attribute__((noreturn)) void cg_crash(unsigned long code)
{
    cg_result = -(long)code;
    shutdown(SHUTDOWN_CRASH);
}

/* ---- The code under test ---- */

enum { REC_NAME = 0x01, REC_COUNT = 0x02, REC_VERSION = 0x04, REC_OPTIONS = 0x07 };

struct cg_state {
    uint8_t name[8];
    uint32_t name_len;
    uint32_t count;
    uint32_t options;
    uint16_t version;
};

/* CG-1: the payload fits the input, not necessarily the field. */
CG_FN void cg_rec_name(struct cg_state *st, const uint8_t *p, uint32_t len)
{
    if (len > sizeof st->name)
        cg_crash(CG_E_NAME); /* would overflow name[8] */
    for (uint32_t i = 0; i < len; i++)
        st->name[i] = p[i];
    st->name_len = len;
}

CG_FN int cg_rec_count(struct cg_state *st, const uint8_t *p, uint32_t len)
{
    if (len != 4)
        return -1;
    st->count = p[0] | p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return 0;
}

/* CG-3: a legacy version after a name. */
CG_FN int cg_rec_version(struct cg_state *st, const uint8_t *p, uint32_t len)
{
    if (len != 2)
        return -1;
    st->version = (uint16_t)(p[0] | p[1] << 8);
    if (st->version == 0x1337 && st->name_len != 0)
        cg_crash(CG_E_VERSION); /* the legacy path reads a freed name */
    return 0;
}

/* CG-2: the retired option 0xA5. */
CG_FN void cg_rec_options(struct cg_state *st, const uint8_t *p, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++) {
        if (p[i] == 0xa5)
            cg_crash(CG_E_OPTION); /* its handler divides by a zero count */
        st->options |= 1u << (p[i] & 31);
    }
}

/* Decodes the records of `p[0..n]`: their number, or a negative error. */
CG_FN long cg_decode(const uint8_t *p, uint32_t n, uint32_t fl)
{
    struct cg_state st;
    for (size_t i = 0; i < sizeof st; i++)
        ((volatile uint8_t *)&st)[i] = 0;
    long records = 0;
    uint32_t i = 0;
    while (n - i >= 2) {
        uint32_t type = p[i], len = p[i + 1];
        i += 2;
        if (len > n - i)
            return -1; /* truncated */
        const uint8_t *payload = p + i;
        switch (type) {
        case REC_NAME:
            cg_rec_name(&st, payload, len);
            break;
        case REC_COUNT:
            if (cg_rec_count(&st, payload, len) < 0)
                return -2;
            break;
        case REC_VERSION:
            if (cg_rec_version(&st, payload, len) < 0)
                return -3;
            break;
        case REC_OPTIONS:
            cg_rec_options(&st, payload, len);
            break;
        default:
            if (fl & CG_F_STRICT)
                return -4; /* unknown record */
        }
        i += len;
        records++;
    }
    return records;
}

__attribute__((noreturn)) void cg_main(uint32_t start_info)
{
    (void)start_info;
    have_xen = xen_init();
    xenprobe_fuzz_start();
    uint32_t n = xenprobe_input_len;
    if (n > sizeof xenprobe_input)
        n = sizeof xenprobe_input;
    uint32_t fl = flags;
    if ((fl & CG_FLAGS_TAG_MASK) != CG_FLAGS_TAG)
        cg_crash(CG_E_FLAGS);
    cg_result = cg_decode(xenprobe_input, n, fl);
    xenprobe_fuzz_end();
    shutdown(SHUTDOWN_POWEROFF);
}
