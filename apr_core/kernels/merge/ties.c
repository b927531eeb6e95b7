/* TIES' trim, sign election and disjoint mean on the CPU, compiled on first use by
 * apr_core/kernels/native.py: reference._ties_block_where written per element, so every bit is
 * the same (NaN and inf included), in one pass instead of torch's dozen whole-block ones.
 *
 * d is K rows of n float32 task vectors (row i at d + i * stride); for each position j:
 *   trimmed_i = |d_ij| >= t_i ? d_ij : +0            weighted_i = w_i * trimmed_i
 *   total = +0 + weighted_0 + ... (in order)          s = sign(total), 0 for NaN
 *   num = +0 + sum of (trimmed_i * s > 0 ? weighted_i : +0), den likewise with w_i
 *   out_j = num, or when normalize: den > 0 ? num / den : +0
 */
#include <stdint.h>

#define BLOCK 1024 /* positions per pass: the block's sums stay in L1, and each loop vectorises */

static inline float trim(float x, float t)
{
    float a = x < 0 ? -x : x;
    return a >= t ? x : 0.0f;
}

void apr_ties_f32(const float *restrict d, uint64_t n, uint64_t stride, int64_t k, const float *restrict t,
                  const float *restrict w, int normalize, float *restrict out)
{
    float total[BLOCK], num[BLOCK], den[BLOCK];
    for (uint64_t start = 0; start < n; start += BLOCK) {
        int m = n - start < BLOCK ? (int)(n - start) : BLOCK;
        for (int j = 0; j < m; j++)
            total[j] = 0.0f, num[j] = 0.0f, den[j] = 0.0f;
        for (int64_t i = 0; i < k; i++) {
            const float *row = d + (uint64_t)i * stride + start, wi = w[i], ti = t[i];
            for (int j = 0; j < m; j++)
                total[j] += wi * trim(row[j], ti);
        }
        for (int j = 0; j < m; j++)
            total[j] = total[j] > 0 ? 1.0f : total[j] < 0 ? -1.0f : 0.0f; /* the elected sign */
        for (int64_t i = 0; i < k; i++) {
            const float *row = d + (uint64_t)i * stride + start, wi = w[i], ti = t[i];
            for (int j = 0; j < m; j++) {
                float x = trim(row[j], ti);
                int agree = x * total[j] > 0;
                num[j] += agree ? wi * x : 0.0f;
                den[j] += agree ? wi : 0.0f;
            }
        }
        float *o = out + start;
        if (normalize)
            for (int j = 0; j < m; j++)
                o[j] = den[j] > 0 ? num[j] / den[j] : 0.0f;
        else
            for (int j = 0; j < m; j++)
                o[j] = num[j];
    }
}
