/* test_kernels_amx_refused.c - the `amx` path when the kernel refuses the
 * tile data state: a seccomp filter makes arch_prctl(ARCH_REQ_XCOMP_PERM)
 * fail with EPERM before the kernels are first used, as a kernel without
 * AMX support (or a sandbox) would. Then the path must be unsupported, the
 * feature line must say `amx_refused_by_kernel`, the default must be the
 * next best path, MC_KERNELS=amx must fall back to it with a warning, and a
 * Q8_0 product of 32 tokens (which the amx path would run on tiles) must
 * still equal the scalar path within the usual 2e-6 of sum |w||x| instead
 * of dying with SIGILL.
 *
 * Says "skipped" and passes where the CPU or OS has no AMX (nothing to
 * refuse) or where a seccomp filter cannot be installed. */
#include "check.h"
#include "dtype.h"
#include "kernels.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__) && defined(__x86_64__)
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

/* arch_prctl(0x1023, ...) -> EPERM; everything else allowed */
static int deny_xcomp_perm(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_arch_prctl, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x1023, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof f / sizeof f[0]), .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
#endif

static uint64_t rng = 0x6A09E667F3BCC908ull;
static float runi(float lo, float hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) / 16777216.0);
}

int main(void)
{
#if defined(__linux__) && defined(__x86_64__)
    /* before anything asks for the path (the permission is asked once, at
     * the first use of the kernels) */
    setenv("MC_KERNELS", "amx", 1);
    if (deny_xcomp_perm() != 0) {
        printf("skipped: cannot install a seccomp filter here (%s)\n", strerror(errno));
        return 0;
    }
    const char *feat = mc_cpu_features();
    printf("cpu features: %s\n", feat);
    if (!strstr(feat, "amx_int8") || !strstr(feat, "amx_tile")) {
        printf("skipped: this CPU or OS has no AMX tiles, so there is nothing to refuse\n");
        return 0;
    }
    CHECK(strstr(feat, "amx_refused_by_kernel") != NULL);
    CHECK(!mc_kpath_supported(MC_KPATH_AMX));
    CHECK(mc_kernels_path() != MC_KPATH_AMX);
    CHECK(mc_kernels_set_path(MC_KPATH_AMX) != 0);
    printf("path with the tile state refused: %s\n", mc_kpath_name(mc_kernels_path()));

    /* a product the amx path would put on tiles runs on the fallback */
    enum { ROWS = 37, COLS = 512, N = 32 };
    float *wf = malloc(sizeof *wf * ROWS * COLS), *x = malloc(sizeof *x * N * COLS);
    float *y = malloc(sizeof *y * N * ROWS), *ys = malloc(sizeof *ys * N * ROWS);
    size_t rb = mc_dtype_row_bytes(MC_DT_Q8_0, COLS);
    unsigned char *q = malloc(rb * ROWS);
    for (int i = 0; i < ROWS * COLS; i++)
        wf[i] = runi(-1, 1);
    for (int i = 0; i < N * COLS; i++)
        x[i] = runi(-1, 1);
    for (int r = 0; r < ROWS; r++)
        mc_quantize_row_q8_0(wf + (size_t)r * COLS, q + (size_t)r * rb, COLS);
    mc_mat w = {.dtype = MC_DT_Q8_0, .rows = ROWS, .cols = COLS, .row_stride = COLS, .data = q};
    mc_matmul(&w, x, N, COLS, y, ROWS);
    mc_kpath used = mc_kernels_path();
    CHECK(mc_kernels_set_path(MC_KPATH_SCALAR) == 0);
    mc_matmul(&w, x, N, COLS, ys, ROWS);
    int bad = 0;
    for (int t = 0; t < N; t++)
        for (int r = 0; r < ROWS; r++) {
            double mag = 0;
            for (int i = 0; i < COLS; i++)
                mag += fabs((double)wf[(size_t)r * COLS + i] * x[(size_t)t * COLS + i]);
            float a = y[(size_t)t * ROWS + r], b = ys[(size_t)t * ROWS + r];
            if (!(fabs((double)a - b) <= 2e-6 * mag) && bad++ < 5)
                fprintf(stderr, "  %s vs scalar: [t %d, row %d] %.9g vs %.9g\n",
                        mc_kpath_name(used), t, r, a, b);
        }
    CHECK(bad == 0);
    free(wf);
    free(x);
    free(y);
    free(ys);
    free(q);
    return check_report("test_kernels_amx_refused");
#else
    printf("skipped: not x86-64 Linux\n");
    return 0;
#endif
}
