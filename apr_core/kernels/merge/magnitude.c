/* Histograms of a task vector's magnitudes for TIES' radix select, compiled on first use by
 * apr_core/kernels/native.py (see reference.radix_select, the definition these counts feed).
 *
 * The task vector is float(v) - float(base), one float32 subtraction per element exactly as
 * torch computes it, and its magnitude's bits |d| are binned without the vector ever being
 * written: bucket < 0 counts the upper 16 bits (2**16 bins); bucket >= 0 counts
 * 1 + clamp(bits - (bucket << 16), -1, 2**16) (2**16 + 2 bins: below, the bucket's low 16 bits,
 * above). torch needs five whole-chunk passes and a bincount for the same counts. Returns 0, or
 * -1 when the sub-histograms' megabyte cannot be allocated.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint32_t magnitude_bits(float a, float b)
{
    float d = a - b;
    uint32_t bits;
    memcpy(&bits, &d, 4);
    return bits & 0x7FFFFFFFu;
}

static inline float from_bf16(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#define BLOCK 1024
#define COPIES 4 /* sub-histograms: runs of equal bins would otherwise wait on each other's stores */

/* Bin of each magnitude: the upper 16 bits, or the clamped position relative to `bucket`. */
static inline uint32_t bin_of(uint32_t bits, int64_t bucket)
{
    if (bucket < 0)
        return bits >> 16;
    int64_t rel = (int64_t)bits - (bucket << 16);
    return rel < 0 ? 0u : rel > 65535 ? 65537u : (uint32_t)rel + 1u;
}

static void count(const uint32_t *bins, int m, uint32_t (*sub)[65538])
{
    int i = 0;
    for (; i + COPIES <= m; i += COPIES)
        for (int c = 0; c < COPIES; c++)
            sub[c][bins[i + c]]++;
    for (; i < m; i++)
        sub[0][bins[i]]++;
}

static void fold(uint32_t (*sub)[65538], int64_t *hist, int nbins)
{
    for (int c = 0; c < COPIES; c++)
        for (int b = 0; b < nbins; b++) {
            hist[b] += sub[c][b];
            sub[c][b] = 0;
        }
}

/* The loop of both entry points: bins are computed a block at a time (vectorised), then
 * counted into uint32 sub-histograms, folded into `hist` before a count could overflow. */
#define HISTOGRAM(LOAD)                                                                   \
    uint32_t (*sub)[65538] = calloc(COPIES, sizeof *sub); /* per call: parts run in threads */ \
    if (sub == NULL)                                                                      \
        return -1;                                                                        \
    uint32_t bins[BLOCK];                                                                 \
    int nbins = bucket < 0 ? 65536 : 65538;                                               \
    uint64_t since_fold = 0;                                                              \
    for (uint64_t start = 0; start < n; start += BLOCK) {                                 \
        int m = n - start < BLOCK ? (int)(n - start) : BLOCK;                             \
        for (int i = 0; i < m; i++)                                                       \
            bins[i] = bin_of(magnitude_bits(LOAD(v[start + i]), LOAD(base[start + i])), bucket); \
        count(bins, m, sub);                                                              \
        since_fold += (uint64_t)m;                                                        \
        if (since_fold > (1u << 31)) {                                                    \
            fold(sub, hist, nbins);                                                       \
            since_fold = 0;                                                               \
        }                                                                                 \
    }                                                                                     \
    fold(sub, hist, nbins);                                                               \
    free(sub);                                                                            \
    return 0;

#define SAME(x) (x)

int apr_magnitude_hist_bf16(const uint16_t *v, const uint16_t *base, uint64_t n, int64_t bucket, int64_t *hist)
{
    HISTOGRAM(from_bf16)
}

int apr_magnitude_hist_f32(const float *v, const float *base, uint64_t n, int64_t bucket, int64_t *hist)
{
    HISTOGRAM(SAME)
}
