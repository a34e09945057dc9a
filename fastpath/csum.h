/* The Internet checksum's one's-complement sum (RFC 1071) over long runs of
 * bytes, as fast as the CPU allows: the payload of every segment the tunnel
 * sends and of every frame GRO takes is summed here.
 *
 * RFC 1071 section 2(B) and (C): the sum is byte-order independent and may
 * be taken over wider words, folding the carries back in at the end. Here
 * each 32-bit lane of a vector accumulates the low and the high 16-bit half
 * of the little-endian words it loads in two separate accumulators, so no
 * carry is ever lost: a lane adds at most 0xFFFF per step, and is emptied
 * into a 64-bit total every VS_CSUM_STEPS steps, long before 2^32. The total
 * (low + high << 16) is congruent, modulo 0xFFFF, to the sum of the data's
 * 16-bit words, as the scalar 64-bit sum in inet.pxd is, so both fold to the
 * same checksum; it is zero only when every byte is.
 *
 * Three bodies, from the same GCC/Clang vector-extension code: 32-byte
 * vectors compiled for AVX2, 16-byte vectors (SSE2 on x86-64, the baseline;
 * whatever the target has elsewhere) and a scalar one. The widest the CPU
 * runs is picked once, on first use (__builtin_cpu_supports); the tests call
 * each by name against a reference sum.
 */
#ifndef VSWITCH_CSUM_H
#define VSWITCH_CSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "csum.h sums little-endian words (x86-64, arm64): a big-endian host needs its own tail"
#endif

#define VS_CSUM_STEPS 32768  /* vector steps between emptying the lanes: 32768 * 0xFFFF < 2^32 */

enum { VS_CSUM_AUTO = 0, VS_CSUM_SCALAR = 1, VS_CSUM_VEC16 = 2, VS_CSUM_AVX2 = 3 };

/* a + b with the carry out of bit 63 added back in (end-around carry). */
static inline uint64_t vs_csum_add64(uint64_t a, uint64_t b)
{
    a += b;
    return a + (a < b);
}

/* The scalar sum: 64-bit words, end-around carry; the tail zero-padded,
 * read with fixed-size loads (a memcpy of a variable length is a call). */
static inline uint64_t vs_csum_scalar(uint64_t s, const uint8_t *p, size_t n)
{
    uint64_t w;
    uint32_t w4;
    uint16_t w2;
    unsigned k = 0;
    while (n >= 8) {
        memcpy(&w, p, 8);
        s = vs_csum_add64(s, w);
        p += 8;
        n -= 8;
    }
    if (n) {
        /* Little-endian: byte i of the tail is bits 8i of the word, as a
         * memcpy into a zeroed word would put it. */
        w = 0;
        if (n >= 4) {
            memcpy(&w4, p, 4);
            w = w4;
            k = 4;
        }
        if (n - k >= 2) {
            memcpy(&w2, p + k, 2);
            w |= (uint64_t)w2 << (8 * k);
            k += 2;
        }
        if (n - k)
            w |= (uint64_t)p[k] << (8 * k);
        s = vs_csum_add64(s, w);
    }
    return s;
}

/* The body of a vector sum over n bytes (n a multiple of the vector's width),
 * for a vector type V of 32-bit lanes: returns the 64-bit total. */
#define VS_CSUM_VECTOR_BODY(V, LANES)                                                  \
    uint64_t total = 0;                                                                \
    const V mask = (V){0} + 0xFFFF;                                                    \
    while (n) {                                                                        \
        size_t steps = n / (2 * sizeof(V)), i;                                         \
        V lo0 = {0}, hi0 = {0}, lo1 = {0}, hi1 = {0}, v0, v1;                          \
        uint64_t lanes = 0;                                                            \
        int k;                                                                         \
        if (steps > VS_CSUM_STEPS)                                                     \
            steps = VS_CSUM_STEPS;                                                     \
        if (steps == 0) { /* one vector left */                                        \
            memcpy(&v0, p, sizeof(V));                                                 \
            lo0 += v0 & mask;                                                          \
            hi0 += v0 >> 16;                                                           \
            p += sizeof(V);                                                            \
            n -= sizeof(V);                                                            \
        }                                                                              \
        for (i = 0; i < steps; i++) { /* two independent chains per step */            \
            memcpy(&v0, p, sizeof(V));                                                 \
            memcpy(&v1, p + sizeof(V), sizeof(V));                                     \
            lo0 += v0 & mask;                                                          \
            hi0 += v0 >> 16;                                                           \
            lo1 += v1 & mask;                                                          \
            hi1 += v1 >> 16;                                                           \
            p += 2 * sizeof(V);                                                        \
        }                                                                              \
        n -= steps * 2 * sizeof(V);                                                    \
        for (k = 0; k < (LANES); k++)                                                  \
            lanes += (uint64_t)lo0[k] + lo1[k] + (((uint64_t)hi0[k] + hi1[k]) << 16);  \
        total += lanes; /* < 2^53 a round: 2^64 is out of reach */                     \
    }                                                                                  \
    return total;

typedef uint32_t vs_v16 __attribute__((vector_size(16)));
typedef uint32_t vs_v32 __attribute__((vector_size(32)));

static uint64_t vs_csum_vec16_body(const uint8_t *p, size_t n)
{
    VS_CSUM_VECTOR_BODY(vs_v16, 4)
}

#if defined(__x86_64__) || defined(__i386__)
#define VS_CSUM_HAVE_AVX2 1
__attribute__((target("avx2"))) static uint64_t vs_csum_avx2_body(const uint8_t *p, size_t n)
{
    VS_CSUM_VECTOR_BODY(vs_v32, 8)
}
#else
#define VS_CSUM_HAVE_AVX2 0
#endif

typedef uint64_t (*vs_csum_body_fn)(const uint8_t *, size_t);

/* Whether the CPU runs implementation `impl`. */
static inline int vs_csum_available(int impl)
{
    if (impl == VS_CSUM_AVX2) {
#if VS_CSUM_HAVE_AVX2
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
#else
        return 0;
#endif
    }
    return impl == VS_CSUM_AUTO || impl == VS_CSUM_SCALAR || impl == VS_CSUM_VEC16;
}

static vs_csum_body_fn vs_csum_best; /* picked on first use: the same for every caller */

/* The sum of n bytes at p added to s by implementation `impl` (which must be
 * available); every piece summed must start at an even offset of the data. */
static inline uint64_t vs_csum_with(int impl, uint64_t s, const uint8_t *p, size_t n)
{
    vs_csum_body_fn body;
    size_t width, bulk;
    if (impl == VS_CSUM_SCALAR)
        return vs_csum_scalar(s, p, n);
    if (impl == VS_CSUM_AUTO) {
        body = vs_csum_best;
        if (body == NULL) {
#if VS_CSUM_HAVE_AVX2
            body = vs_csum_available(VS_CSUM_AVX2) ? vs_csum_avx2_body : vs_csum_vec16_body;
#else
            body = vs_csum_vec16_body;
#endif
            vs_csum_best = body;
        }
    }
#if VS_CSUM_HAVE_AVX2
    else if (impl == VS_CSUM_AVX2)
        body = vs_csum_avx2_body;
#endif
    else
        body = vs_csum_vec16_body;
    width = body == vs_csum_vec16_body ? sizeof(vs_v16) : sizeof(vs_v32);
    bulk = n - n % width;
    if (bulk) {
        s = vs_csum_add64(s, body(p, bulk));
        p += bulk;
        n -= bulk;
    }
    return vs_csum_scalar(s, p, n);
}

/* The loop's sum: short runs (headers) inline and scalar, long ones vectorised. */
static inline uint64_t vs_csum_add(uint64_t s, const uint8_t *p, size_t n)
{
    if (n < 64)
        return vs_csum_scalar(s, p, n);
    return vs_csum_with(VS_CSUM_AUTO, s, p, n);
}

#endif
