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

static void philox_block(uint64_t first, int count, uint32_t k0, uint32_t k1, uint32_t *words)
{
    for (int i = 0; i < count; i++) {
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
