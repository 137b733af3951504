/* cuda/qdot.cuh - one warp's products of a Q8_0 / Q4_K / Q6_K weight row
 * with NT activation rows quantized as the CPU quantizes them
 * (mck_quantize_act: q (rows, kp) int8, d (rows, kp / blk) F32 scales, bsum
 * (rows, kp / sub) int16 sums): integer products per block, dequantized by
 * the block scales, summed per lane in F32 (the caller sums the warp). Token
 * t's activations are row tr[t] of q / d / bsum, so a caller may repeat a
 * row (tr[t] = the last valid one) for tokens it does not use. The one-expert
 * products (matmul.cu) and the grouped experts (experts.cu) share them, so
 * both give the same bits. */
#ifndef MC_CUDA_QDOT_CUH
#define MC_CUDA_QDOT_CUH

#include "cuda/cuda_ops.h"
#include "cuda/dequant.cuh"

/* Q8_0: lane l takes element l of every block of the row. */
template <int NT>
__device__ __forceinline__ void mck_q8_0_dot(const unsigned char *row, int kp,
                                             const int8_t *__restrict__ q,
                                             const float *__restrict__ d, const long long (&tr)[NT],
                                             int lane, float (&acc)[NT])
{
    const int nb = kp / 32;
#pragma unroll 4
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = row + (size_t)b * MCK_Q8_0_BYTES;
        const float dw = mck_f16(mck_u16(blk));
        const int qw = (int8_t)blk[2 + lane];
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int p = qw * (int)q[(size_t)tr[t] * kp + (size_t)b * 32 + lane];
            acc[t] += __fmul_rn(dw, d[(size_t)tr[t] * nb + b]) * (float)p;
        }
    }
}

/* Q4_K: lane l takes byte l of each 32-byte quarter c of qs: elements
 * 64c + l (low nibble, sub-block 2c) and 64c + 32 + l (high, 2c + 1); lanes
 * 0..7 add sub-block l's min term (bsum: sums per 32). */
template <int NT>
__device__ __forceinline__ void mck_q4_k_dot(const unsigned char *row, int kp,
                                             const int8_t *__restrict__ q,
                                             const float *__restrict__ d,
                                             const int16_t *__restrict__ bsum,
                                             const long long (&tr)[NT], int lane, float (&acc)[NT])
{
    const int nb = kp / 256;
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = row + (size_t)b * MCK_Q4_K_BYTES;
        const float dd = mck_f16(mck_u16(blk)), dm = mck_f16(mck_u16(blk + 2));
        int sc[8], mn[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            mck_q4_k_scale_min(j, blk + 4, &sc[j], &mn[j]);
        int sumi[NT];
#pragma unroll
        for (int t = 0; t < NT; t++)
            sumi[t] = 0;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int qb = blk[16 + 32 * c + lane], lo = qb & 0xF, hi = qb >> 4;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const int8_t *xs = q + (size_t)tr[t] * kp + (size_t)b * 256 + 64 * c;
                sumi[t] += sc[2 * c] * lo * xs[lane] + sc[2 * c + 1] * hi * xs[32 + lane];
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float xd = d[(size_t)tr[t] * nb + b];
            acc[t] += __fmul_rn(dd, xd) * (float)sumi[t];
            if (lane < 8) {
                int mins = 0;
#pragma unroll
                for (int j = 0; j < 8; j++)
                    mins += j == lane ? mn[j] * bsum[(size_t)tr[t] * (kp / 32) + (size_t)b * 8 + j]
                                      : 0;
                acc[t] -= __fmul_rn(dm, xd) * (float)mins;
            }
        }
    }
}

/* Q6_K (ql[128] | qh[64] | int8 scales[16] | f16 d): lane l takes element
 * 128h + 32g + l of each half h and group g: 6-bit value q (low nibble of
 * ql[64h + 32(g & 1) + l], the high one for g >= 2, and 2 bits of
 * qh[32h + l] at 2g), sub-block 8h + 2g + l / 16; the block's integer sum
 * is the CPU's, sum_j sc_j * (sum q x - 32 * bsum16_j), the offset terms
 * added by lanes 0..15 (sub-block = lane; bsum: sums per 16). */
template <int NT>
__device__ __forceinline__ void mck_q6_k_dot(const unsigned char *row, int kp,
                                             const int8_t *__restrict__ q,
                                             const float *__restrict__ d,
                                             const int16_t *__restrict__ bsum16,
                                             const long long (&tr)[NT], int lane, float (&acc)[NT])
{
    const int nb = kp / 256;
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = row + (size_t)b * MCK_Q6_K_BYTES;
        const signed char *sc = (const signed char *)(blk + 192);
        const float dd = mck_f16(mck_u16(blk + 208));
        int sumi[NT];
#pragma unroll
        for (int t = 0; t < NT; t++)
            sumi[t] = 0;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int qh = blk[128 + 32 * h + lane];
#pragma unroll
            for (int g = 0; g < 4; g++) {
                int lo = blk[64 * h + 32 * (g & 1) + lane];
                lo = g >= 2 ? lo >> 4 : lo & 0xF;
                const int v = lo | (((qh >> (2 * g)) & 3) << 4);
                const int s = sc[8 * h + 2 * g + lane / 16];
#pragma unroll
                for (int t = 0; t < NT; t++)
                    sumi[t] += s * v *
                               (int)q[(size_t)tr[t] * kp + (size_t)b * 256 + 128 * h + 32 * g +
                                      lane];
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (lane < 16)
                sumi[t] -= 32 * (int)sc[lane] *
                           (int)bsum16[(size_t)tr[t] * (kp / 16) + (size_t)b * 16 + lane];
            acc[t] += __fmul_rn(dd, d[(size_t)tr[t] * nb + b]) * (float)sumi[t];
        }
    }
}

/* acc[t] += row `row` of a DT block-format matrix . activation rows tr[t]. */
template <int DT, int NT>
__device__ __forceinline__ void mck_q_dot(const unsigned char *row, int kp, const int8_t *q,
                                          const float *d, const int16_t *bsum,
                                          const long long (&tr)[NT], int lane, float (&acc)[NT])
{
    if (DT == MCK_DT_Q8_0)
        mck_q8_0_dot<NT>(row, kp, q, d, tr, lane, acc);
    else if (DT == MCK_DT_Q4_K)
        mck_q4_k_dot<NT>(row, kp, q, d, bsum, tr, lane, acc);
    else
        mck_q6_k_dot<NT>(row, kp, q, d, bsum, tr, lane, acc);
}

#endif
