/* GGML Q8_0 encoding on the CPU, compiled on first use by apr_core/kernels/native.py.
 *
 * The same bits as apr_core.quant.ggml.Q8_0.encode_rows for every block of finite values:
 * d = amax / 127 in float32, id = 1 / d (0 when d is 0), each code the float32 product x * id
 * rounded half away from zero as trunc(2v) - trunc(v) (codec.round_half_away_int), stored as
 * int8. The scales go out as float32 for the caller to round to f16 with torch (the reference's
 * conversion); codes are written at byte 2 of each 34-byte block. A block holding NaN or an
 * infinity returns 1 at once, and the caller encodes the whole chunk with the reference: what
 * torch makes of those values is its definition, not ours to imitate.
 *
 * amax is the largest |x| as an integer over the bits with the sign cleared: for non-negative
 * floats that order is the float order, and NaN or inf shows as bits >= 0x7f800000. Blocks go
 * GROUP at a time so that their divisions are one vector instruction instead of a scalar chain
 * per block (3.5x faster than block by block). A subnormal d makes id infinite, and every code
 * of such a block 0 in the reference (x * inf is inf or NaN); id = 0 gives the same codes.
 */
#include <float.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 32
#define BLOCK_BYTES 34
#define GROUP 16

typedef uint32_t __attribute__((may_alias)) bits32; /* a float's bits, read in place (gcc, clang) */

/* 0, or 1 when a block holds NaN or an infinity (the output is then incomplete) */
int apr_q8_0_f32(const float *restrict x, uint64_t blocks, float *restrict scales, uint8_t *restrict out)
{
    for (uint64_t g = 0; g < blocks; g += GROUP) {
        int n = blocks - g < GROUP ? (int)(blocks - g) : GROUP;
        uint32_t top[GROUP];
        float d[GROUP], id[GROUP];
        for (int j = 0; j < n; j++) {
            const bits32 *u = (const bits32 *)(x + BLOCK * (g + j));
            uint32_t t = 0;
            for (int i = 0; i < BLOCK; i++) {
                uint32_t a = u[i] & 0x7fffffffu;
                t = a > t ? a : t;
            }
            top[j] = t;
        }
        uint32_t any = 0;
        for (int j = 0; j < n; j++) any |= top[j] >= 0x7f800000u;
        if (any) return 1;
        for (int j = 0; j < GROUP; j++) {
            float amax;
            memcpy(&amax, &top[j < n ? j : 0], sizeof amax);
            d[j] = amax / 127.0f;
            id[j] = d[j] == 0.0f ? 0.0f : 1.0f / d[j];
            id[j] = id[j] <= FLT_MAX ? id[j] : 0.0f;
        }
        for (int j = 0; j < n; j++) {
            const float *v = x + BLOCK * (g + j);
            int8_t *q = (int8_t *)(out + BLOCK_BYTES * (g + j) + 2);
            float s = id[j];
            for (int i = 0; i < BLOCK; i++) {
                float t = v[i] * s;
                q[i] = (int8_t)((int32_t)(t + t) - (int32_t)t);
            }
            scales[g + j] = d[j];
        }
    }
    return 0;
}
