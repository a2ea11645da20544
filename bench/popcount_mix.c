/* The inner loop of the AVX2 binary conv (schedules/simd_bytes.py, 1 pixel x 16 channels, nibble planes) written
 * out in C, alone and with scalar POPCNT channels interleaved in the same loop body: does Zen's scalar popcount run
 * alongside the vector pipes for free? Built by bench/popcount_mix.py with -DVEC=<vector channels>
 * -DSCALAR=<scalar channels>; prints bit-MACs per second. Data stays in L1 (one tile's 36 words of a 3x3x256
 * filter), so this measures the pipes, not memory. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WORDS 36  /* 3 x 3 taps x 4 words of 64 input channels: the 3x3 256->256 conv */
#define GROUP 18  /* words per byte-counter group (each byte <= 8 per word and plane: < 256) */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t rnd(void) { return ((uint64_t)rand() << 33) ^ ((uint64_t)rand() << 11) ^ (uint64_t)rand(); }

int main(int argc, char **argv) {
  long reps = argc > 1 ? atol(argv[1]) : 2000000;
  const uint64_t nib = 0x0F0F0F0F0F0F0F0FULL;
  uint64_t *x = aligned_alloc(64, 16 * WORDS), *xr = aligned_alloc(64, 8 * WORDS);
  __m256i *w = aligned_alloc(64, 32 * 8 * WORDS);
  uint64_t *ws = aligned_alloc(64, 16 * 8 * WORDS);
  for (int i = 0; i < WORDS; i++) {
    xr[i] = rnd();
    x[2 * i] = xr[i] & nib, x[2 * i + 1] = (xr[i] >> 4) & nib;
  }
  for (int i = 0; i < 8 * WORDS; i++) w[i] = _mm256_set_epi64x(rnd() & nib, rnd() & nib, rnd() & nib, rnd() & nib);
  for (int i = 0; i < 16 * WORDS; i++) ws[i] = rnd();
  const __m256i tab = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                       3, 2, 3, 3, 4);
  const __m256i zero = _mm256_setzero_si256();
  __m256i tot = zero;
  uint64_t stot = 0;
  double t0 = now();
  for (long n = 0; n < reps; n++) {
    __m256i a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    uint64_t s[16] = {0};
    for (int g = 0; g < WORDS; g += GROUP) {
#pragma GCC unroll 6
      for (int k = g; k < g + GROUP; k++) {
        __m256i lo = _mm256_set1_epi64x(x[2 * k]), hi = _mm256_set1_epi64x(x[2 * k + 1]);
#define PLANES(acc, v)                                                                                           \
  acc = _mm256_add_epi64(acc, _mm256_add_epi64(_mm256_shuffle_epi8(tab, _mm256_xor_si256(lo, w[8 * k + v])),     \
                                               _mm256_shuffle_epi8(tab, _mm256_xor_si256(hi, w[8 * k + 4 + v]))))
        if (VEC > 0) PLANES(a0, 0);
        if (VEC > 4) PLANES(a1, 1);
        if (VEC > 8) PLANES(a2, 2);
        if (VEC > 12) PLANES(a3, 3);
#pragma GCC unroll 16
        for (int c = 0; c < SCALAR; c++) s[c] += (uint64_t)__builtin_popcountll(xr[k] ^ ws[16 * k + c]);
      }
      /* the byte counters widened once per group, as the kernel does */
      tot = _mm256_add_epi64(tot, _mm256_add_epi64(_mm256_add_epi64(_mm256_sad_epu8(a0, zero), _mm256_sad_epu8(a1, zero)),
                                                   _mm256_add_epi64(_mm256_sad_epu8(a2, zero), _mm256_sad_epu8(a3, zero))));
      a0 = a1 = a2 = a3 = zero;
    }
    for (int c = 0; c < SCALAR; c++) stot += s[c];
    __asm__ volatile("" ::: "memory"); /* the next tile reloads its words */
  }
  double t = now() - t0;
  uint64_t check = (uint64_t)_mm256_extract_epi64(tot, 0) + stot;
  printf("%.6e %llu\n", (double)reps * WORDS * (VEC + SCALAR) * 64 / t, (unsigned long long)check);
  return 0;
}
