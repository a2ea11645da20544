/* What both bare-metal startups (startup_cortexm.c, startup_aarch64.c) share: semihosting file output and exit,
 * the counted begin/end regions, and the memory routines gcc may emit calls to even under -ffreestanding.
 * Included by exactly one .c file per image, after it defines MAX_REGIONS, SYS_EXIT_OP (the 2-word exit call of its
 * architecture) and `static uintptr_t sh_call(uintptr_t op, const void *arg)` (its semihosting trap). Parameter
 * blocks are words of the architecture's pointer size. */
#ifndef TVM_BNN_BM_STARTUP_COMMON_H
#define TVM_BNN_BM_STARTUP_COMMON_H
#include <stddef.h>
#include <stdint.h>

#include "tvm_bnn_bm.h"

#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE0 0x04
#define SYS_WRITE 0x05
#define ADP_Stopped_ApplicationExit 0x20026u

static uintptr_t c_strlen(const char *s) {
  uintptr_t n = 0;
  while (s[n] != '\0') n++;
  return n;
}

static intptr_t sh_open(const char *name) {
  uintptr_t args[3] = {(uintptr_t)name, 5u /* "wb" */, c_strlen(name)};
  return (intptr_t)sh_call(SYS_OPEN, args);
}

static void sh_write(intptr_t fd, const void *data, uintptr_t nbytes) {
  uintptr_t args[3] = {(uintptr_t)fd, (uintptr_t)data, nbytes};
  sh_call(SYS_WRITE, args);
}

static void sh_close(intptr_t fd) {
  uintptr_t args[1] = {(uintptr_t)fd};
  sh_call(SYS_CLOSE, args);
}

static void __attribute__((noreturn)) sh_exit(uintptr_t code) {
  uintptr_t args[2] = {ADP_Stopped_ApplicationExit, code};
  for (;;) sh_call(SYS_EXIT_OP, args);
}

static intptr_t out_fd = -1;

void tvm_bnn_bm_output(const void *data, uint32_t nbytes) {
  if (out_fd < 0) out_fd = sh_open("tvm_bnn_out.bin");
  if (out_fd < 0) {
    sh_call(SYS_WRITE0, "tvm_bnn: cannot open tvm_bnn_out.bin\n");
    sh_exit(3);
  }
  sh_write(out_fd, data, nbytes);
}

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
