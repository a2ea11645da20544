/* tvm_bnn bare-metal AArch64 startup for QEMU's "virt" board (qemu-system-aarch64 -M virt), with semihosting.
 *
 * Used only to count instructions: qemu-user (which runs cm(x) on an ARM Linux target) has no -icount, system
 * emulation has. Under -icount shift=S every instruction advances virtual time by 2^S ns and the generic timer's
 * virtual counter (CNTVCT_EL0, CNTFRQ_EL0 Hz) follows virtual time, so instructions = ticks * 1e9 / CNTFRQ / 2^S.
 *
 * _start (EL1): stack, FP/SIMD on, an identity map with the MMU and caches on (with the MMU off every access is
 * Device memory, where unaligned and many vector accesses fault), .bss zeroed, main(), then QEMU exits with main's
 * return code. Files written on the host (relative to QEMU's working directory):
 *   tvm_bnn_out.bin    everything main() passed to tvm_bnn_bm_output()
 *   tvm_bnn_ticks.bin  uint64 x 4: counter ticks summed over begin/end regions, number of regions, ticks of one
 *                      empty region, CNTFRQ_EL0; then the ticks of each region (the first 4096)
 */
#include <stddef.h>
#include <stdint.h>

#include "tvm_bnn_bm.h"

extern char __bss_start__[], __bss_end__[];
int main(void);
void tvm_bnn_reset(void);

/* Level-1 translation table, 4 KiB granule, 39-bit VA: 1 GiB blocks. 0-1 GiB (flash, UART, GIC) Device,
   1-4 GiB (RAM from 0x40000000) Normal write-back. */
static uint64_t tvm_bnn_l1_table[512] __attribute__((aligned(4096)));

__asm__(
    ".section .text.boot, \"ax\"\n"
    ".global _start\n"
    "_start:\n"
    "  ldr x0, =__stack_top\n"
    "  mov sp, x0\n"
    "  mov x0, #(3 << 20)\n" /* CPACR_EL1.FPEN: no trap of FP/SIMD */
    "  msr cpacr_el1, x0\n"
    "  isb\n"
    "  bl tvm_bnn_reset\n"
    "1: b 1b\n"
    ".text\n");

/* ---- semihosting (HLT #0xF000, 64-bit parameter blocks) ---- */
#define SYS_EXIT_OP 0x18 /* SYS_EXIT with a 2-word block (AArch64) */
#define MAX_REGIONS 4096

static uintptr_t sh_call(uintptr_t op, const void *arg) {
  register uintptr_t x0 __asm__("x0") = op;
  register const void *x1 __asm__("x1") = arg;
  __asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
  return x0;
}

#include "tvm_bnn_bm_startup_common.h"

/* The math functions of the kernels (nearbyintf for a rounding quantizer on armv7, which has no VRINT) come from the
   cross toolchain's static libm (-lm), built with the stack protector: its guard and failure hook. */
uintptr_t __attribute__((weak)) __stack_chk_guard = (uintptr_t)0x595e9fbd94fda766ull;
void __attribute__((weak, noreturn)) __stack_chk_fail(void) { sh_exit(0x7Eu); }

/* ---- the generic timer's virtual counter ---- */
uint64_t tvm_bnn_bm_ticks(void) {
  uint64_t v;
  __asm__ volatile("isb\n\tmrs %0, cntvct_el0" : "=r"(v)::"memory");
  return v;
}


static void enable_mmu(void) {
  for (uint64_t i = 0; i < 512; i++) {
    /* block descriptor: valid, AF, inner shareable, AttrIndx 0 (Device) for the first GiB, 1 (Normal) after */
    uint64_t attr = i == 0 ? (0u << 2) : ((1u << 2) | (3u << 8));
    tvm_bnn_l1_table[i] = (i << 30) | attr | (1u << 10) | 1u;
  }
  uint64_t mair = 0x00u | (0xFFu << 8);                             /* attr0 Device-nGnRnE, attr1 Normal WB */
  uint64_t tcr = 25u | (1u << 8) | (1u << 10) | (3u << 12) | (2ull << 32); /* T0SZ 25, WB WA, inner sh., 40-bit PA */
  __asm__ volatile(
      "msr mair_el1, %0\n\tmsr tcr_el1, %1\n\tmsr ttbr0_el1, %2\n\tdsb sy\n\tisb\n"
      "mrs x9, sctlr_el1\n\torr x9, x9, #1\n\torr x9, x9, #(1 << 2)\n\torr x9, x9, #(1 << 12)\n"
      "bic x9, x9, #(1 << 1)\n\tmsr sctlr_el1, x9\n\tisb" /* M, C, I on; A (alignment check) off */
      ::"r"(mair), "r"(tcr), "r"((uint64_t)(uintptr_t)tvm_bnn_l1_table)
      : "x9", "memory");
}

void __attribute__((noreturn, used, optimize("no-tree-loop-distribute-patterns"))) tvm_bnn_reset(void) {
  for (char *p = __bss_start__; p < __bss_end__; p++) *p = 0;
  enable_mmu();
  calibrate_regions();

  int rc = main();

  if (out_fd >= 0) sh_close(out_fd);
  uint64_t freq;
  __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(freq));
  uint64_t ticks[4] = {region_ticks, region_count, region_overhead, freq};
  intptr_t fd = sh_open("tvm_bnn_ticks.bin");
  if (fd >= 0) {
    sh_write(fd, ticks, sizeof(ticks));
    sh_write(fd, region_each, recorded_regions() * sizeof(uint64_t));
    sh_close(fd);
  }
  sh_exit((uint64_t)(uint32_t)rc);
}
