/* xenprobe-rawloop: the floor of an exact snapshot-reset fuzzing loop,
 * written straight on Xen's C libraries (libxenctrl, libxenforeignmemory,
 * libxenevtchn) with nothing else around it: no LibAFL, no engine, no
 * bookkeeping. `cargo xtask bench fuzz` builds it with the host's gcc
 * (xtask/src/bench/rawloop.rs) and `xenprobe-fuzz-bench` runs it in dom0
 * beside xenprobe on the same guest, so that xenprobe's rates are printed
 * as ratios to what the stack itself allows.
 *
 * One run of the loop, exact mode:
 *   1. write the input and its length through one persistent read-write
 *      mapping of all guest RAM;
 *   2. answer the pending vm_event with VM_EVENT_FLAG_SET_REGISTERS and the
 *      snapshot's registers (general registers, RIP, RFLAGS): the vCPU
 *      starts again at the start point;
 *   3. busy-poll the ring (bounded by the TSC, never the clock: a clock read
 *      is a system call in a PV dom0) and block on the event channel after
 *      the bound, until the ICEBP at the end point or a sink reports;
 *   4. PEEK the log-dirty bitmap (limited to RAM), or CLEAN it every N runs,
 *      and copy back every frame it reports (the union of all frames dirtied
 *      since the last CLEAN), re-planting the breakpoints in them; put back
 *      the input bytes the run wrote (log-dirty does not see dom0's writes).
 * Mode `none` skips step 4 but for the top of the stack (512 bytes from the
 * snapshot's RSP: the return address the next call overwrites). Mode
 * `direct` is `exact` with step 4's PEEK or CLEAN issued as xenprobe
 * issues it: the same domctl through privcmd's hypercall ioctl from a
 * buffer kept across calls, where libxc takes and zeroes a hypercall
 * buffer page per call.
 *
 * Every phase is timed with the TSC on every run (a few cycles); the TSC
 * is calibrated against CLOCK_MONOTONIC around each batch. The check after
 * an exact batch: memory equal to the snapshot frame by frame, and the
 * registers at the start point equal to the snapshot's.
 *
 * One batch (`--mode`, `--seconds`) prints one `rawloop k=v ...` line and,
 * in exact mode, a `rawcheck k=v ...` line. With `--serve` the guest is
 * kept and batches run on command, one a line on stdin (`exact SECONDS`,
 * `direct SECONDS`, `none SECONDS`, `check`, `quit`): the bench alternates them with
 * xenprobe's own batches, so that both see the same load. */

#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xen/vm_event.h>

#define PAGE 4096u
#define ICEBP 0xf1
#define MAX_SINKS 16
#define STACK_KEEP 512
/* RAM is probed this many frames at a time (stops at the first empty chunk). */
#define PROBE_CHUNK 4096u

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "xenprobe-rawloop: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static double mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- options ---- */

struct opts {
    const char *cfg, *name, *inputs_path;
    uint64_t start, end, sinks[MAX_SINKS], input, len, quiet;
    int nsinks, len_width, exact, serve;
    size_t input_size;
    long runs, clean_every, spin_us;
    double seconds;
};

static uint64_t num(const char *s)
{
    char *e;
    errno = 0;
    unsigned long long v = strtoull(s, &e, 0);
    if (errno || *e || e == s)
        die("bad number %s", s);
    return v;
}

static void parse(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {
        {"cfg", 1, 0, 'c'},       {"name", 1, 0, 'n'},   {"start", 1, 0, 's'},
        {"end", 1, 0, 'e'},       {"sink", 1, 0, 'k'},   {"input", 1, 0, 'i'},
        {"input-size", 1, 0, 'z'}, {"len", 1, 0, 'l'},   {"len-width", 1, 0, 'w'},
        {"quiet", 1, 0, 'q'},     {"inputs", 1, 0, 'f'}, {"runs", 1, 0, 'r'},
        {"seconds", 1, 0, 't'},   {"mode", 1, 0, 'm'},   {"clean-every", 1, 0, 'C'},
        {"spin-us", 1, 0, 'S'},   {"serve", 0, 0, 'V'},  {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->exact = 1;
    o->runs = 1000000;
    o->seconds = 3;
    o->clean_every = 1000;
    o->spin_us = 2000;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o->cfg = optarg; break;
        case 'n': o->name = optarg; break;
        case 's': o->start = num(optarg); break;
        case 'e': o->end = num(optarg); break;
        case 'k':
            if (o->nsinks == MAX_SINKS)
                die("at most %d sinks", MAX_SINKS);
            o->sinks[o->nsinks++] = num(optarg);
            break;
        case 'i': o->input = num(optarg); break;
        case 'z': o->input_size = num(optarg); break;
        case 'l': o->len = num(optarg); break;
        case 'w': o->len_width = (int)num(optarg); break;
        case 'q': o->quiet = num(optarg); break;
        case 'f': o->inputs_path = optarg; break;
        case 'r': o->runs = (long)num(optarg); break;
        case 't': o->seconds = atof(optarg); break;
        case 'm':
            if (!strcmp(optarg, "exact"))
                o->exact = 1;
            else if (!strcmp(optarg, "none"))
                o->exact = 0;
            else
                die("--mode exact or none");
            break;
        case 'C': o->clean_every = (long)num(optarg); break;
        case 'S': o->spin_us = (long)num(optarg); break;
        case 'V': o->serve = 1; break;
        default: exit(2);
        }
    }
    if (!o->cfg || !o->name || !o->start || !o->end || !o->input || !o->input_size ||
        !o->len || !o->inputs_path)
        die("need --cfg --name --start --end --input --input-size --len --inputs");
    if (o->len_width != 1 && o->len_width != 2 && o->len_width != 4 && o->len_width != 8)
        die("--len-width 1, 2, 4 or 8");
    if (o->clean_every < 1)
        o->clean_every = 1;
}

/* Inputs: a file of (u32 little-endian length, bytes) records. */
struct inputs {
    uint8_t *data;
    size_t *off, *len, n;
};

static void load_inputs(const char *path, size_t cap, struct inputs *in)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    in->data = malloc(size + 1);
    if (!in->data || fread(in->data, 1, size, f) != (size_t)size)
        die("reading %s", path);
    fclose(f);
    size_t n = 0, at = 0;
    while (at + 4 <= (size_t)size) {
        uint32_t l;
        memcpy(&l, in->data + at, 4);
        at += 4 + l;
        n++;
    }
    in->off = calloc(n + 1, sizeof(size_t));
    in->len = calloc(n + 1, sizeof(size_t));
    at = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t l;
        memcpy(&l, in->data + at, 4);
        in->off[i] = at + 4;
        in->len[i] = l < cap ? l : cap;
        at += 4 + l;
    }
    in->n = n;
    if (!n)
        die("%s holds no input", path);
}

/* ---- the guest ---- */

static xc_interface *xch;
static xenforeignmemory_handle *fmem;
static xenevtchn_handle *xce;
static uint32_t domid;
static evtchn_port_t port;
static vm_event_back_ring_t ring;
static void *ring_page;

static uint8_t *ram;       /* persistent mapping of frames 0..nframes */
static int *ram_err;       /* per-frame mapping error (0: mapped) */
static uint64_t nframes;   /* RAM frames tracked (bitmap size) */
static uint8_t *snap;      /* the snapshot's copy of RAM */
static struct vm_event_regs_x86 snap_regs;

struct bp {
    uint64_t pa;
    uint8_t orig;
};
static struct bp bps[MAX_SINKS + 1];
static int nbps;

static double tsc_per_us;

static void sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        die("`%s` failed (%d)", cmd, rc);
}

static uint32_t find_domid(const char *name)
{
    char cmd[512], out[64] = {0};
    snprintf(cmd, sizeof cmd, "xl domid '%s'", name);
    FILE *p = popen(cmd, "r");
    if (!p || !fgets(out, sizeof out, p))
        die("no domain %s", name);
    pclose(p);
    return (uint32_t)num(strtok(out, "\n"));
}

static int mapped(uint64_t gfn) { return gfn < nframes && ram_err[gfn] == 0; }

/* Maps every RAM frame: from 0 up to the first chunk with no frame. */
static void map_ram(void)
{
    uint64_t end = 0;
    xen_pfn_t *gfns = malloc(PROBE_CHUNK * sizeof *gfns);
    int *errs = malloc(PROBE_CHUNK * sizeof *errs);
    for (uint64_t base = 0;; base += PROBE_CHUNK) {
        for (unsigned i = 0; i < PROBE_CHUNK; i++)
            gfns[i] = base + i;
        void *m = xenforeignmemory_map(fmem, domid, PROT_READ, PROBE_CHUNK, gfns, errs);
        if (!m)
            die("probing frames at %#" PRIx64 ": %s", base, strerror(errno));
        int any = 0;
        for (unsigned i = 0; i < PROBE_CHUNK; i++)
            if (!errs[i]) {
                any = 1;
                end = base + i + 1;
            }
        xenforeignmemory_unmap(fmem, m, PROBE_CHUNK);
        if (!any)
            break;
    }
    free(gfns);
    free(errs);
    nframes = end;
    xen_pfn_t *all = malloc(nframes * sizeof *all);
    ram_err = calloc(nframes, sizeof *ram_err);
    for (uint64_t i = 0; i < nframes; i++)
        all[i] = i;
    ram = xenforeignmemory_map(fmem, domid, PROT_READ | PROT_WRITE, nframes, all, ram_err);
    if (!ram)
        die("mapping guest RAM: %s", strerror(errno));
    free(all);
}

static uint64_t read_pa64(uint64_t pa)
{
    if (!mapped(pa / PAGE))
        die("page walk: frame %#" PRIx64 " not mapped", pa / PAGE);
    uint64_t v;
    memcpy(&v, ram + pa, 8);
    return v;
}

/* 4-level page walk through the mapping (paging off: identity). */
static uint64_t translate(uint64_t cr3, uint64_t cr0, uint64_t va)
{
    if (!(cr0 & 0x80000000u))
        return va;
    const uint64_t addr = 0x000ffffffffff000ull;
    uint64_t table = cr3 & addr;
    for (int level = 3; level >= 0; level--) {
        uint64_t e = read_pa64(table + ((va >> (12 + 9 * level)) & 0x1ff) * 8);
        if (!(e & 1))
            die("va %#" PRIx64 " not mapped", va);
        if (level == 0)
            return (e & addr) | (va & 0xfff);
        if (level <= 2 && (e & 0x80)) {
            uint64_t size = 1ull << (12 + 9 * level);
            return (e & addr & ~(size - 1)) | (va & (size - 1));
        }
        table = e & addr;
    }
    return 0;
}

static uint64_t va2pa(uint64_t va) { return translate(snap_regs.cr3, snap_regs.cr0, va); }

/* A virtually contiguous range as physical pieces (the input may cross pages). */
static void write_virt(uint64_t va, const void *src, size_t n)
{
    const uint8_t *s = src;
    while (n) {
        size_t off = va & (PAGE - 1), k = PAGE - off < n ? PAGE - off : n;
        memcpy(ram + va2pa(va), s, k);
        va += k, s += k, n -= k;
    }
}

/* Copies a virtual range back from the snapshot. */
static void unwrite_virt(uint64_t va, size_t n)
{
    while (n) {
        size_t off = va & (PAGE - 1), k = PAGE - off < n ? PAGE - off : n;
        uint64_t pa = va2pa(va);
        memcpy(ram + pa, snap + pa, k);
        va += k, n -= k;
    }
}

/* ---- vm_event ---- */

static void ring_setup(void)
{
    uint32_t remote;
    ring_page = xc_monitor_enable(xch, domid, &remote);
    if (!ring_page)
        die("xc_monitor_enable: %s", strerror(errno));
    int p = xenevtchn_bind_interdomain(xce, domid, remote);
    if (p < 0)
        die("binding the ring's event channel: %s", strerror(errno));
    port = (evtchn_port_t)p;
    SHARED_RING_INIT((vm_event_sring_t *)ring_page);
    BACK_RING_INIT(&ring, (vm_event_sring_t *)ring_page, XC_PAGE_SIZE);
    if (xc_monitor_debug_exceptions(xch, domid, 1, 1))
        die("xc_monitor_debug_exceptions: %s", strerror(errno));
}

static int take_request(vm_event_request_t *req)
{
    if (!RING_HAS_UNCONSUMED_REQUESTS(&ring))
        return 0;
    RING_IDX c = ring.req_cons;
    memcpy(req, RING_GET_REQUEST(&ring, c), sizeof *req);
    ring.req_cons = c + 1;
    ring.sring->req_event = c + 2;
    xen_mb();
    return 1;
}

/* Spins up to spin_us (TSC), then blocks on the event channel. */
static void wait_request(vm_event_request_t *req, long spin_us, double timeout_s)
{
    if (take_request(req))
        return;
    uint64_t until = __rdtsc() + (uint64_t)(spin_us * tsc_per_us);
    while (__rdtsc() < until)
        for (int i = 0; i < 32; i++) {
            if (take_request(req))
                return;
            _mm_pause();
        }
    int fd = xenevtchn_fd(xce);
    double deadline = mono() + timeout_s;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, 50);
        if (rc > 0) {
            xenevtchn_port_or_error_t pp = xenevtchn_pending(xce);
            if (pp >= 0)
                xenevtchn_unmask(xce, pp);
        }
        if (take_request(req))
            return;
        if (mono() > deadline)
            die("no event within %.1f s (a hang?)", timeout_s);
    }
}

static void respond(const vm_event_request_t *req, const struct vm_event_regs_x86 *regs)
{
    vm_event_response_t *rsp = RING_GET_RESPONSE(&ring, ring.rsp_prod_pvt);
    memset(rsp, 0, sizeof *rsp);
    rsp->version = VM_EVENT_INTERFACE_VERSION;
    rsp->vcpu_id = req->vcpu_id;
    rsp->reason = req->reason;
    rsp->flags = req->flags & VM_EVENT_FLAG_VCPU_PAUSED;
    if (regs) {
        rsp->flags |= VM_EVENT_FLAG_SET_REGISTERS;
        rsp->data.regs.x86 = *regs;
    }
    ring.rsp_prod_pvt++;
    RING_PUSH_RESPONSES(&ring);
    xenevtchn_notify(xce, port);
}

static void plant(uint64_t va)
{
    uint64_t pa = va2pa(va);
    bps[nbps].pa = pa;
    bps[nbps].orig = ram[pa];
    ram[pa] = ICEBP;
    nbps++;
}

/* ---- the loop ---- */

enum { P_INPUT, P_RESUME, P_WAIT, P_PEEK, P_COPY, P_OTHER, NPHASES };
static const char *phase_name[NPHASES] = {"input", "resume", "wait", "peek", "copy", "other"};

static struct opts o;
static struct inputs in;
static vm_event_request_t req;   /* the pending event (the vCPU waits on it) */
static unsigned long *bitmap;
static xc_hypercall_buffer_t *bitmap_buf;
static size_t bitmap_bytes;
static size_t prev_len;          /* bytes of the last input written */
static long since_clean;
static long next_input;

/* privcmd_hypercall_t and its ioctl (include/uapi/xen/privcmd.h). */
struct privcmd_hypercall {
    uint64_t op;
    uint64_t arg[5];
};
#define IOCTL_PRIVCMD_HYPERCALL (('P' << 8) | (sizeof(struct privcmd_hypercall) << 16))
#define HYPERVISOR_DOMCTL 36

static struct xen_domctl *domctl; /* `direct` batches: kept across calls */
static xc_hypercall_buffer_t *domctl_buf;
static int privcmd = -1;

/* The log-dirty bitmap: PEEK, or CLEAN; through libxc, or (`direct`) as a
 * domctl of its own. */
static void logdirty(int clean, int direct)
{
    unsigned int op = clean ? XEN_DOMCTL_SHADOW_OP_CLEAN : XEN_DOMCTL_SHADOW_OP_PEEK;
    if (!direct) {
        xc_shadow_op_stats_t st;
        if (xc_logdirty_control(xch, domid, op, bitmap_buf, nframes, 0, &st) < 0)
            die("log-dirty %s: %s", clean ? "CLEAN" : "PEEK", strerror(errno));
        return;
    }
    if (!domctl) {
        domctl_buf = calloc(1, sizeof *domctl_buf);
        domctl_buf->ubuf = (void *)-1; /* HYPERCALL_BUFFER_INIT_NO_BOUNCE */
        domctl = xc__hypercall_buffer_alloc(xch, domctl_buf, sizeof *domctl);
        privcmd = open("/dev/xen/privcmd", O_RDWR | O_CLOEXEC);
        if (!domctl || privcmd < 0)
            die("domctl buffer: %s", strerror(errno));
    }
    memset(domctl, 0, sizeof *domctl);
    domctl->cmd = XEN_DOMCTL_shadow_op;
    domctl->interface_version = XEN_DOMCTL_INTERFACE_VERSION;
    domctl->domain = (domid_t)domid;
    domctl->u.shadow_op.op = op;
    domctl->u.shadow_op.dirty_bitmap.p = (uint8_t *)bitmap;
    domctl->u.shadow_op.pages = nframes;
    struct privcmd_hypercall hc = {HYPERVISOR_DOMCTL, {(uint64_t)(uintptr_t)domctl, 0, 0, 0, 0}};
    if (ioctl(privcmd, IOCTL_PRIVCMD_HYPERCALL, &hc) < 0)
        die("log-dirty %s (domctl): %s", clean ? "CLEAN" : "PEEK", strerror(errno));
}

/* Boots the guest to its start point, plants the end point and the sinks,
 * takes the snapshot. */
static void setup(void)
{
    sh("xl destroy '%s' >/dev/null 2>&1 || true", o.name);
    sh("xl create -q -p '%s'", o.cfg);
    domid = find_domid(o.name);
    xch = xc_interface_open(NULL, NULL, 0);
    fmem = xenforeignmemory_open(NULL, 0);
    xce = xenevtchn_open(NULL, 0);
    if (!xch || !fmem || !xce)
        die("opening the Xen libraries: %s", strerror(errno));
    ring_setup();
    map_ram();

    /* Boot to the start point: paging is off until the guest's boot code
     * turns it on, so the start address is a physical one (identity-mapped
     * guests, as xenprobe's own sessions assume). */
    if (!mapped(o.start / PAGE))
        die("start %#" PRIx64 " is not in RAM", o.start);
    uint8_t start_orig = ram[o.start];
    ram[o.start] = ICEBP;
    if (xc_domain_unpause(xch, domid))
        die("unpause: %s", strerror(errno));
    wait_request(&req, 0, 30);
    if (req.reason != VM_EVENT_REASON_DEBUG_EXCEPTION || req.data.regs.x86.rip != o.start)
        die("the guest did not stop at the start point (reason %u, rip %#" PRIx64 ")",
            req.reason, (uint64_t)req.data.regs.x86.rip);
    ram[o.start] = start_orig;
    snap_regs = req.data.regs.x86;
    if (va2pa(o.start) != o.start)
        die("the start point is not identity-mapped");
    if (o.quiet) {
        uint8_t one = 1;
        write_virt(o.quiet, &one, 1);
    }
    plant(o.end);
    for (int i = 0; i < o.nsinks; i++)
        plant(o.sinks[i]);

    /* The snapshot: RAM copied once with the breakpoints' original bytes,
     * log-dirty on, the bitmap cleaned; the registers are the event's. */
    if (xc_shadow_control(xch, domid, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, NULL, 0))
        die("log-dirty on: %s", strerror(errno));
    snap = malloc(nframes * PAGE);
    if (!snap)
        die("no memory for the snapshot");
    for (uint64_t g = 0; g < nframes; g++)
        if (mapped(g))
            memcpy(snap + g * PAGE, ram + g * PAGE, PAGE);
    for (int i = 0; i < nbps; i++)
        snap[bps[i].pa] = bps[i].orig;
    bitmap_bytes = (nframes + 63) / 64 * 8;
    bitmap_buf = calloc(1, sizeof *bitmap_buf);
    bitmap_buf->ubuf = (void *)-1; /* HYPERCALL_BUFFER_INIT_NO_BOUNCE */
    bitmap = xc__hypercall_buffer_alloc(xch, bitmap_buf, bitmap_bytes);
    if (!bitmap)
        die("bitmap: %s", strerror(errno));
    logdirty(1, 0);
}

/* Runs inputs for `seconds` (exact: every run reset, the log-dirty call
 * `direct` or through libxc; else registers and the stack top only) and
 * prints the result line. */
static void batch(int exact, int direct, double seconds)
{
    uint64_t ph[NPHASES] = {0};
    uint64_t dirty_total = 0, runs = 0, ends = 0, crashes = 0;
    double t_start = mono();
    uint64_t k_start = __rdtsc();
    uint64_t k_limit = k_start + (uint64_t)(seconds * 1e6 * tsc_per_us);
    uint64_t t = k_start;
    for (long r = 0; r < o.runs && t < k_limit; r++) {
        size_t i = (size_t)(next_input++ % (long)in.n), n = in.len[i];
        uint64_t t0 = __rdtsc();
        write_virt(o.input, in.data + in.off[i], n);
        uint64_t lenv = n;
        write_virt(o.len, &lenv, (size_t)o.len_width);
        uint64_t t1 = __rdtsc();
        respond(&req, &snap_regs);
        uint64_t t2 = __rdtsc();
        wait_request(&req, o.spin_us, 10);
        uint64_t t3 = __rdtsc();
        uint64_t rip = req.data.regs.x86.rip;
        if (req.reason != VM_EVENT_REASON_DEBUG_EXCEPTION)
            die("unexpected vm_event reason %u at %#" PRIx64, req.reason, rip);
        if (rip == o.end) {
            ends++;
        } else {
            int sink = 0;
            for (int s = 0; s < o.nsinks; s++)
                sink |= rip == o.sinks[s];
            if (!sink)
                die("stopped at %#" PRIx64 ", neither the end nor a sink", rip);
            crashes++;
        }
        uint64_t t4 = t3, t5;
        if (exact) {
            int clean = ++since_clean >= o.clean_every;
            if (clean)
                since_clean = 0;
            logdirty(clean, direct);
            t4 = __rdtsc();
            for (uint64_t w = 0; w < bitmap_bytes / 8; w++) {
                unsigned long bits = bitmap[w];
                while (bits) {
                    uint64_t g = w * 64 + (uint64_t)__builtin_ctzl(bits);
                    bits &= bits - 1;
                    if (!mapped(g))
                        continue;
                    memcpy(ram + g * PAGE, snap + g * PAGE, PAGE);
                    for (int b = 0; b < nbps; b++)
                        if (bps[b].pa / PAGE == g)
                            ram[bps[b].pa] = ICEBP;
                    dirty_total++;
                }
            }
            /* The input bytes beyond this run's come back from the
             * snapshot: dom0's writes are not in the bitmap. */
            if (prev_len > n)
                unwrite_virt(o.input + n, prev_len - n);
            t5 = __rdtsc();
        } else {
            unwrite_virt(snap_regs.rsp, STACK_KEEP);
            t5 = __rdtsc();
        }
        prev_len = n;
        ph[P_INPUT] += t1 - t0;
        ph[P_RESUME] += t2 - t1;
        ph[P_WAIT] += t3 - t2;
        ph[P_PEEK] += t4 - t3;
        ph[P_COPY] += t5 - t4;
        runs++;
        t = __rdtsc();
        ph[P_OTHER] += t - t5;
    }
    double secs = mono() - t_start;
    /* The TSC rate, refined over the batch. */
    tsc_per_us = (double)(__rdtsc() - k_start) / (secs * 1e6);
    printf("rawloop mode=%s runs=%" PRIu64 " secs=%.3f execs_per_s=%.1f ends=%" PRIu64
           " crashes=%" PRIu64 " dirty_per_run=%.2f frames=%" PRIu64,
           exact ? (direct ? "direct" : "exact") : "none", runs, secs, runs / secs, ends, crashes,
           runs ? (double)dirty_total / runs : 0.0, nframes);
    for (int p = 0; p < NPHASES; p++)
        printf(" %s_us=%.1f", phase_name[p], runs ? ph[p] / tsc_per_us / runs : 0.0);
    printf("\n");
    fflush(stdout);
}

/* Checks that a reset is exact: the input bytes back, memory reset, a
 * breakpoint at the start point, one reset into it; the registers there
 * and every frame compared with the snapshot. Prints the check line;
 * returns 1 if exact. */
static int check(void)
{
    unwrite_virt(o.input, prev_len > 0 ? prev_len : 1);
    unwrite_virt(o.len, (size_t)o.len_width);
    prev_len = 0;
    logdirty(0, 0);
    for (uint64_t w = 0; w < bitmap_bytes / 8; w++)
        for (unsigned long bits = bitmap[w]; bits; bits &= bits - 1) {
            uint64_t g = w * 64 + (uint64_t)__builtin_ctzl(bits);
            if (mapped(g)) {
                memcpy(ram + g * PAGE, snap + g * PAGE, PAGE);
                for (int b = 0; b < nbps; b++)
                    if (bps[b].pa / PAGE == g)
                        ram[bps[b].pa] = ICEBP;
            }
        }
    uint8_t start_orig = ram[o.start];
    ram[o.start] = ICEBP;
    respond(&req, &snap_regs);
    wait_request(&req, o.spin_us, 10);
    ram[o.start] = start_orig;
    const struct vm_event_regs_x86 *a = &req.data.regs.x86, *b = &snap_regs;
    const char *regs = "ok";
    if (a->rip != b->rip)
        regs = "rip";
    else if (a->rsp != b->rsp || a->rbp != b->rbp || a->rax != b->rax || a->rbx != b->rbx ||
             a->rcx != b->rcx || a->rdx != b->rdx || a->rsi != b->rsi || a->rdi != b->rdi ||
             a->r8 != b->r8 || a->r9 != b->r9 || a->r10 != b->r10 || a->r11 != b->r11 ||
             a->r12 != b->r12 || a->r13 != b->r13 || a->r14 != b->r14 || a->r15 != b->r15)
        regs = "gprs";
    else if (a->rflags != b->rflags)
        regs = "rflags";
    else if (a->cr0 != b->cr0 || a->cr3 != b->cr3 || a->cr4 != b->cr4 || a->msr_efer != b->msr_efer)
        regs = "control";
    static uint8_t page[PAGE];
    uint64_t differ = 0, frames = 0;
    for (uint64_t g = 0; g < nframes; g++) {
        if (!mapped(g))
            continue;
        frames++;
        memcpy(page, ram + g * PAGE, PAGE);
        for (int b2 = 0; b2 < nbps; b2++)
            if (bps[b2].pa / PAGE == g)
                page[bps[b2].pa % PAGE] = bps[b2].orig;
        differ += memcmp(page, snap + g * PAGE, PAGE) != 0;
    }
    int ok = differ == 0 && !strcmp(regs, "ok");
    printf("rawcheck exact=%s differ=%" PRIu64 " checked=%" PRIu64 " regs=%s\n", ok ? "yes" : "NO",
           differ, frames, regs);
    fflush(stdout);
    return ok;
}

static void teardown(void)
{
    xc__hypercall_buffer_free(xch, bitmap_buf);
    if (domctl) {
        xc__hypercall_buffer_free(xch, domctl_buf);
        close(privcmd);
    }
    xenforeignmemory_unmap(fmem, ram, nframes);
    xenevtchn_unbind(xce, port);
    xc_monitor_disable(xch, domid);
    munmap(ring_page, XC_PAGE_SIZE);
    sh("xl destroy '%s'", o.name);
}

int main(int argc, char **argv)
{
    parse(argc, argv, &o);
    load_inputs(o.inputs_path, o.input_size, &in);

    /* TSC rate, calibrated over 50 ms (refined over each batch). */
    double c0 = mono();
    uint64_t k0 = __rdtsc();
    usleep(50000);
    tsc_per_us = (double)(__rdtsc() - k0) / ((mono() - c0) * 1e6);

    setup();
    int ok = 1;
    if (!o.serve) {
        batch(o.exact, 0, o.seconds);
        if (o.exact)
            ok = check();
    } else {
        /* One command a line: `exact SECONDS`, `direct SECONDS`, `none
         * SECONDS`, `check`, `quit`; each answered with one line. */
        printf("rawready frames=%" PRIu64 "\n", nframes);
        fflush(stdout);
        char line[128];
        while (fgets(line, sizeof line, stdin)) {
            char cmd[16];
            double secs = 0;
            if (sscanf(line, "%15s %lf", cmd, &secs) < 1)
                continue;
            if (!strcmp(cmd, "exact") || !strcmp(cmd, "direct") || !strcmp(cmd, "none"))
                batch(strcmp(cmd, "none") != 0, !strcmp(cmd, "direct"), secs);
            else if (!strcmp(cmd, "check"))
                ok &= check();
            else if (!strcmp(cmd, "quit"))
                break;
            else
                die("unknown command %s", cmd);
        }
    }
    teardown();
    return ok ? 0 : 1;
}
