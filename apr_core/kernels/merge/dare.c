/* DARE drop-and-rescale on the CPU, compiled on first use by apr_core/kernels/native.py.
 *
 * The same definition as reference.py (and the Triton kernel): element g of the stream is
 * dropped iff word g % 4 of Philox4x32-10(counter = g / 4, key = seed) is below `threshold`;
 * survivors are multiplied by `scale` (one float32 product, as torch's mul_ gives it) and
 * dropped entries become +0, whatever they held (NaN and inf included: the product's bits are
 * ANDed with all-zero bits). numpy runs the ten rounds one whole-array call at a time, about
 * 7 ns per element on one core; here each counter's rounds stay in registers and the compiler
 * vectorises the counter loop, so the stream costs a small part of the memory traffic.
 */
#include <stdint.h>
#include <string.h>

#define ROUND_A 0xD2511F53u
#define ROUND_B 0xCD9E8D57u
#define KEY_A 0x9E3779B9u
#define KEY_B 0xBB67AE85u
#define BLOCK 256 /* counters per pass: their words fit in L1 */

#if defined(__AVX2__) && !defined(__AVX512F__)
/* AVX2 without AVX-512: the compiler's vectorisation of the loop below spends most of its time
 * moving the 64-bit products' halves between lanes (3.1 ns per element on an AVX2 EPYC). Here
 * eight counters go through the rounds in 32-bit lanes: even and odd lanes are multiplied
 * separately (vpmuludq) and the halves blended back, then the four words are transposed into
 * the counter-major order of `words`. With AVX-512 the compiler's own code is fast (1.1 ns). */
#include <immintrin.h>
#define PHILOX_LANES 8

static inline void mul_hi_lo(__m256i w, __m256i m, __m256i *hi, __m256i *lo)
{
    __m256i even = _mm256_mul_epu32(w, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(w, 32), m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

static void philox_lanes(uint64_t first, uint32_t k0, uint32_t k1, uint32_t *words)
{
    uint32_t lo[PHILOX_LANES], hi[PHILOX_LANES];
    for (int i = 0; i < PHILOX_LANES; i++)
        lo[i] = (uint32_t)(first + (uint64_t)i), hi[i] = (uint32_t)((first + (uint64_t)i) >> 32);
    __m256i w0 = _mm256_loadu_si256((const __m256i *)lo), w1 = _mm256_loadu_si256((const __m256i *)hi);
    __m256i w2 = _mm256_setzero_si256(), w3 = _mm256_setzero_si256();
    const __m256i ma = _mm256_set1_epi32((int)ROUND_A), mb = _mm256_set1_epi32((int)ROUND_B);
    uint32_t a = k0, b = k1;
    for (int r = 0; r < 10; r++) {
        __m256i h0, l0, h2, l2;
        mul_hi_lo(w0, ma, &h0, &l0);
        mul_hi_lo(w2, mb, &h2, &l2);
        w0 = _mm256_xor_si256(_mm256_xor_si256(h2, w1), _mm256_set1_epi32((int)a));
        w2 = _mm256_xor_si256(_mm256_xor_si256(h0, w3), _mm256_set1_epi32((int)b));
        w1 = l2;
        w3 = l0;
        a += KEY_A;
        b += KEY_B;
    }
    __m256i t0 = _mm256_unpacklo_epi32(w0, w1), t1 = _mm256_unpackhi_epi32(w0, w1);
    __m256i t2 = _mm256_unpacklo_epi32(w2, w3), t3 = _mm256_unpackhi_epi32(w2, w3);
    __m256i c04 = _mm256_unpacklo_epi64(t0, t2), c15 = _mm256_unpackhi_epi64(t0, t2);
    __m256i c26 = _mm256_unpacklo_epi64(t1, t3), c37 = _mm256_unpackhi_epi64(t1, t3);
    _mm256_storeu_si256((__m256i *)words, _mm256_permute2x128_si256(c04, c15, 0x20));
    _mm256_storeu_si256((__m256i *)(words + 8), _mm256_permute2x128_si256(c26, c37, 0x20));
    _mm256_storeu_si256((__m256i *)(words + 16), _mm256_permute2x128_si256(c04, c15, 0x31));
    _mm256_storeu_si256((__m256i *)(words + 24), _mm256_permute2x128_si256(c26, c37, 0x31));
}
#endif

static void philox_block(uint64_t first, int count, uint32_t k0, uint32_t k1, uint32_t *words)
{
    int i = 0;
#ifdef PHILOX_LANES
    for (; i + PHILOX_LANES <= count; i += PHILOX_LANES)
        philox_lanes(first + (uint64_t)i, k0, k1, words + 4 * i);
#endif
    for (; i < count; i++) {
        uint64_t c = first + (uint64_t)i;
        uint32_t w0 = (uint32_t)c, w1 = (uint32_t)(c >> 32), w2 = 0, w3 = 0;
        uint32_t a = k0, b = k1;
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)ROUND_A * w0, p2 = (uint64_t)ROUND_B * w2;
            uint32_t n0 = (uint32_t)(p2 >> 32) ^ w1 ^ a;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ w3 ^ b;
            w1 = (uint32_t)p2;
            w3 = (uint32_t)p0;
            w0 = n0;
            w2 = n2;
            a += KEY_A;
            b += KEY_B;
        }
        words[4 * i] = w0;
        words[4 * i + 1] = w1;
        words[4 * i + 2] = w2;
        words[4 * i + 3] = w3;
    }
}

/* data[j] for j < n is stream element offset + j. threshold is round(p * 2**32), 0 .. 2**32. */
void apr_dare_f32(float *data, uint64_t n, uint64_t offset, uint64_t seed, uint64_t threshold, float scale)
{
    uint32_t words[4 * BLOCK];
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    uint64_t j = 0;
    while (j < n) {
        uint64_t g = offset + j;
        uint64_t counter = g >> 2;
        int lead = (int)(g & 3);
        uint64_t take = 4 * (uint64_t)BLOCK - (uint64_t)lead;
        if (take > n - j)
            take = n - j;
        philox_block(counter, (int)((lead + take + 3) >> 2), k0, k1, words);
        const uint32_t *w = words + lead;
        float *d = data + j;
        for (uint64_t i = 0; i < take; i++) {
            float x = d[i] * scale;
            uint32_t bits;
            memcpy(&bits, &x, 4);
            bits &= (uint64_t)w[i] >= threshold ? 0xFFFFFFFFu : 0u;
            memcpy(&d[i], &bits, 4);
        }
        j += take;
    }
}
