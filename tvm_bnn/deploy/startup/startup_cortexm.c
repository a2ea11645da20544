/* tvm_bnn bare-metal startup for Cortex-M under QEMU (mps2/mps3 boards) with semihosting.
 *
 * Vector table + reset handler (copy .data, zero .bss, enable the FPU when compiled for one, start SysTick),
 * then main(); afterwards the outputs and the tick counts are closed and QEMU exits with main's return code
 * (SYS_EXIT_EXTENDED). No libc: the few memory routines gcc may call even under -ffreestanding are defined here.
 *
 * Files written on the host (relative to QEMU's working directory, semihosting target=native):
 *   tvm_bnn_out.bin    everything main() passed to tvm_bnn_bm_output()
 *   tvm_bnn_ticks.bin  uint64 x 3: SysTick ticks summed over begin/end regions, number of regions,
 *                      ticks of one empty begin/end region (the overhead per region); then the ticks of each
 *                      region (the first MAX_REGIONS: per-kernel profiles)
 */
#include <stddef.h>
#include <stdint.h>

#include "tvm_bnn_bm.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);

/* ---- semihosting ---- */
#define SYS_EXIT_OP 0x20 /* SYS_EXIT_EXTENDED: QEMU exits with the code */
#define MAX_REGIONS 512

static uintptr_t sh_call(uintptr_t op, const void *arg) {
  register uintptr_t r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

#include "tvm_bnn_bm_startup_common.h"

/* ---- SysTick: 24-bit down counter on the processor clock, wraps counted by its interrupt ---- */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SCB_ICSR (*(volatile uint32_t *)0xE000ED04u)
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SYST_TOP 0x00FFFFFFu

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

uint64_t tvm_bnn_bm_ticks(void) {
  uint32_t w1, w2, v, pending;
  do {
    w1 = systick_wraps;
    v = SYST_CVR;
    pending = SCB_ICSR & (1u << 26); /* PENDSTSET: wrapped, interrupt not taken yet */
    w2 = systick_wraps;
  } while (w1 != w2);
  if (pending && v > SYST_TOP / 2) w1++;
  return (uint64_t)w1 * (SYST_TOP + 1u) + (SYST_TOP - v);
}


/* ---- reset and faults ---- */
/* The FPU (and on v8.1-M, MVE) is enabled first: at -O3 gcc vectorises the copy loops below into MVE/FPU
   instructions, which fault while CP10/CP11 are off. Neither loop may become a memcpy/memset call (libc is not
   initialised yet), nor be vectorised at all (no-tree-vectorize: safe whatever the core). */
void __attribute__((noreturn, used, optimize("no-tree-loop-distribute-patterns", "no-tree-vectorize")))
Reset_Handler(void) {
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  SCB_CPACR |= 0xFu << 20; /* CP10, CP11 full access */
  __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
  uint32_t *src = &_sidata, *dst = &_sdata;
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss; dst++) *dst = 0u;
  SYST_RVR = SYST_TOP;
  SYST_CVR = 0u;
  SYST_CSR = 7u; /* enable, interrupt on wrap, processor clock */

  calibrate_regions();

  int rc = main();

  if (out_fd >= 0) sh_close(out_fd);
  uint64_t ticks[3] = {region_ticks, region_count, region_overhead};
  intptr_t fd = sh_open("tvm_bnn_ticks.bin");
  if (fd >= 0) {
    sh_write(fd, ticks, sizeof(ticks));
    sh_write(fd, region_each, (uint32_t)(recorded_regions() * sizeof(uint64_t)));
    sh_close(fd);
  }
  sh_exit((uint32_t)rc & 0xFFu);
}

void __attribute__((noreturn)) Fault_Handler(void) {
  sh_call(SYS_WRITE0, "tvm_bnn: fault (HardFault/MemManage/BusFault/UsageFault)\n");
  sh_exit(0x7Fu);
}

void __attribute__((noreturn)) Default_Handler(void) {
  sh_call(SYS_WRITE0, "tvm_bnn: unexpected interrupt\n");
  sh_exit(0x7Eu);
}

typedef void (*vector_t)(void);

__attribute__((section(".isr_vector"), used)) const vector_t tvm_bnn_vectors[16] = {
    (vector_t)(uintptr_t)&_estack, Reset_Handler,
    Default_Handler, /* NMI */
    Fault_Handler,   /* HardFault */
    Fault_Handler,   /* MemManage */
    Fault_Handler,   /* BusFault */
    Fault_Handler,   /* UsageFault */
    0, 0, 0, 0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
};
