/* The small interface between a test/benchmark main() and the bare-metal (or host) harness of tvm_bnn. */
#ifndef TVM_BNN_BM_H
#define TVM_BNN_BM_H
#include <stdint.h>

/* Append nbytes to the output the runner reads back (a host file, via semihosting on the board). */
void tvm_bnn_bm_output(const void *data, uint32_t nbytes);
/* Bracket the code to measure; the runner reports the summed instructions of all begin/end regions. */
void tvm_bnn_bm_begin(void);
void tvm_bnn_bm_end(void);
/* Ticks of the board's SysTick (processor clock) since reset; always 0 on the host. */
uint64_t tvm_bnn_bm_ticks(void);

#endif
