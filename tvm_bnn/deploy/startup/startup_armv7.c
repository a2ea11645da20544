/* tvm_bnn bare-metal ARMv7-A startup for QEMU's "virt" board (qemu-system-arm -M virt -cpu cortex-a7), with
 * semihosting. The 32-bit twin of startup_aarch64.c, for the same purpose: qemu-user (which runs cm(x) on an armv7
 * Linux target) has no -icount, system emulation has. Under -icount shift=S every instruction advances virtual time
 * by 2^S ns and the generic timer's virtual counter (CNTVCT, CNTFRQ Hz) follows virtual time, so
 * instructions = ticks * 1e9 / CNTFRQ / 2^S.
 *
 * _start (ARM state, PL1 SVC mode as QEMU starts an ELF): stack; VFP/NEON on (CPACR cp10/cp11 full access, then
 * FPEXC.EN); tvm_bnn_reset(): .bss zeroed, a flat section map with the MMU and caches on (with the MMU off every
 * access is Strongly-ordered memory, where an unaligned access faults), main(), then QEMU exits with main's return
 * code (SYS_EXIT_EXTENDED). The C may be Thumb-2 (Debian's armhf gcc default) or ARM: semihosting uses the trap of
 * the state it is compiled for. Files written on the host (relative to QEMU's working directory):
 *   tvm_bnn_out.bin    everything main() passed to tvm_bnn_bm_output()
 *   tvm_bnn_ticks.bin  uint64 x 4: counter ticks summed over begin/end regions, number of regions, ticks of one
 *                      empty region, CNTFRQ; then the ticks of each region (the first 4096)
 */
#include <stddef.h>
#include <stdint.h>

#include "tvm_bnn_bm.h"

extern char __bss_start__[], __bss_end__[];
int main(void);
void tvm_bnn_reset(void);

/* Short-descriptor level-1 table: 4096 1 MiB sections. 0-1 GiB (flash, UART, GIC) Device, 1-4 GiB (RAM from
   0x40000000) Normal write-back write-allocate. 16 KiB aligned (TTBR0 with TTBCR.N = 0). */
static uint32_t tvm_bnn_l1_table[4096] __attribute__((aligned(16384)));

__asm__(
    ".section .text.boot, \"ax\"\n"
    ".arm\n"
    ".fpu neon-vfpv4\n"
    ".global _start\n"
    ".type _start, %function\n"
    "_start:\n"
    "  ldr sp, =__stack_top\n"
    "  mrc p15, 0, r0, c1, c0, 2\n" /* CPACR: cp10, cp11 full access (VFP and NEON) */
    "  orr r0, r0, #(0xf << 20)\n"
    "  mcr p15, 0, r0, c1, c0, 2\n"
    "  isb\n"
    "  mov r0, #0x40000000\n" /* FPEXC.EN */
    "  vmsr fpexc, r0\n"
    "  blx tvm_bnn_reset\n"
    "1: b 1b\n"
    ".text\n");

/* ---- semihosting: SVC 0x123456 in ARM state, SVC 0xAB in Thumb state; 32-bit parameter blocks ---- */
#define SYS_EXIT_OP 0x20 /* SYS_EXIT_EXTENDED: QEMU exits with the code */
#define MAX_REGIONS 4096

static uintptr_t sh_call(uintptr_t op, const void *arg) {
  register uintptr_t r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = arg;
#if defined(__thumb__)
  __asm__ volatile("svc #0xab" : "+r"(r0) : "r"(r1) : "memory");
#else
  __asm__ volatile("svc #0x123456" : "+r"(r0) : "r"(r1) : "memory");
#endif
  return r0;
}

#include "tvm_bnn_bm_startup_common.h"

/* The math functions of the kernels (nearbyintf for a rounding quantizer on armv7, which has no VRINT) come from the
   cross toolchain's static libm (-lm), built with the stack protector: its guard and failure hook. */
uintptr_t __attribute__((weak)) __stack_chk_guard = (uintptr_t)0x595e9fbd94fda766ull;
void __attribute__((weak, noreturn)) __stack_chk_fail(void) { sh_exit(0x7Eu); }

/* LLVM's objects carry ARM EHABI unwind tables (.ARM.exidx) that name the personality routines; nothing unwinds
   without an OS or C++ exceptions, so they only need to exist. */
void __attribute__((weak, noreturn)) __aeabi_unwind_cpp_pr0(void) { sh_exit(0x7Du); }
void __attribute__((weak, noreturn)) __aeabi_unwind_cpp_pr1(void) { sh_exit(0x7Du); }
void __attribute__((weak, noreturn)) __aeabi_unwind_cpp_pr2(void) { sh_exit(0x7Du); }

/* ---- the generic timer's virtual counter ---- */
uint64_t tvm_bnn_bm_ticks(void) {
  uint32_t lo, hi;
  __asm__ volatile("isb\n\tmrrc p15, 1, %0, %1, c14" : "=r"(lo), "=r"(hi)::"memory"); /* CNTVCT */
  return ((uint64_t)hi << 32) | lo;
}

static void enable_mmu(void) {
  for (uint32_t i = 0; i < 4096; i++) {
    /* section descriptor, AP[1:0] = 0b11 (read/write), domain 0; Device (B) below 1 GiB, Normal WB-WA
       (TEX = 001, C, B) with S (shareable) above */
    uint32_t attr = i < 1024 ? (1u << 2) : ((1u << 12) | (1u << 3) | (1u << 2) | (1u << 16));
    tvm_bnn_l1_table[i] = (i << 20) | attr | (3u << 10) | 2u;
  }
  __asm__ volatile(
      "mov r0, #0\n\t"
      "mcr p15, 0, r0, c2, c0, 2\n\t"  /* TTBCR = 0: TTBR0 only, short descriptors */
      "mcr p15, 0, %0, c2, c0, 0\n\t"  /* TTBR0 */
      "mov r0, #1\n\t"
      "mcr p15, 0, r0, c3, c0, 0\n\t"  /* DACR: domain 0 client (the AP bits apply) */
      "mov r0, #0\n\t"
      "mcr p15, 0, r0, c8, c7, 0\n\t"  /* TLBIALL */
      "mcr p15, 0, r0, c7, c5, 0\n\t"  /* ICIALLU */
      "dsb\n\tisb\n\t"
      "mrc p15, 0, r0, c1, c0, 0\n\t"  /* SCTLR: M, C, Z, I on; A (alignment check) off */
      "orr r0, r0, #(1 << 0)\n\t"
      "orr r0, r0, #(1 << 2)\n\t"
      "orr r0, r0, #(1 << 11)\n\t"
      "orr r0, r0, #(1 << 12)\n\t"
      "bic r0, r0, #(1 << 1)\n\t"
      "mcr p15, 0, r0, c1, c0, 0\n\t"
      "isb" ::"r"((uint32_t)(uintptr_t)tvm_bnn_l1_table)
      : "r0", "memory");
}

void __attribute__((noreturn, used, optimize("no-tree-loop-distribute-patterns"))) tvm_bnn_reset(void) {
  for (char *p = __bss_start__; p < __bss_end__; p++) *p = 0;
  enable_mmu();
  calibrate_regions();

  int rc = main();

  if (out_fd >= 0) sh_close(out_fd);
  uint32_t freq;
  __asm__ volatile("mrc p15, 0, %0, c14, c0, 0" : "=r"(freq)); /* CNTFRQ */
  uint64_t ticks[4] = {region_ticks, region_count, region_overhead, freq};
  intptr_t fd = sh_open("tvm_bnn_ticks.bin");
  if (fd >= 0) {
    sh_write(fd, ticks, sizeof(ticks));
    sh_write(fd, region_each, (uintptr_t)(recorded_regions() * sizeof(uint64_t)));
    sh_close(fd);
  }
  sh_exit((uintptr_t)(uint32_t)rc & 0xFFu);
}
