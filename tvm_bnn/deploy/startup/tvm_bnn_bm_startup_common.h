/* What both bare-metal startups (startup_cortexm.c, startup_aarch64.c) share: the counted begin/end regions and
 * the memory routines gcc may emit calls to even under -ffreestanding. Included by exactly one .c file per image,
 * after it defines MAX_REGIONS and declares tvm_bnn_bm_ticks (tvm_bnn_bm.h). */
#ifndef TVM_BNN_BM_STARTUP_COMMON_H
#define TVM_BNN_BM_STARTUP_COMMON_H
#include <stddef.h>
#include <stdint.h>

#include "tvm_bnn_bm.h"

static uint64_t region_start, region_ticks, region_count, region_overhead;
static uint64_t region_each[MAX_REGIONS]; /* ticks of each region, in order (per-kernel profiles) */

void tvm_bnn_bm_begin(void) { region_start = tvm_bnn_bm_ticks(); }

void tvm_bnn_bm_end(void) {
  uint64_t ticks = tvm_bnn_bm_ticks() - region_start;
  region_ticks += ticks;
  if (region_count < MAX_REGIONS) region_each[region_count] = ticks;
  region_count++;
}

/* the cost of an empty region, measured once at reset and subtracted by the runner */
static void calibrate_regions(void) {
  tvm_bnn_bm_begin();
  tvm_bnn_bm_end();
  region_overhead = region_ticks;
  region_ticks = 0u;
  region_count = 0u;
}

static uint64_t recorded_regions(void) { return region_count < MAX_REGIONS ? region_count : MAX_REGIONS; }

#define NO_LOOP_PATTERNS __attribute__((used, weak, optimize("no-tree-loop-distribute-patterns")))

NO_LOOP_PATTERNS void *memcpy(void *dst, const void *src, size_t n) {
  uint8_t *d = dst;
  const uint8_t *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

NO_LOOP_PATTERNS void *memmove(void *dst, const void *src, size_t n) {
  uint8_t *d = dst;
  const uint8_t *s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

NO_LOOP_PATTERNS void *memset(void *dst, int c, size_t n) {
  uint8_t *d = dst;
  while (n--) *d++ = (uint8_t)c;
  return dst;
}

#endif
