/* Host implementation of tvm_bnn_bm.h: outputs go to ./tvm_bnn_out.bin, nothing is timed. */
#include <stdio.h>
#include <stdlib.h>
#include "tvm_bnn_bm.h"

void tvm_bnn_bm_output(const void *data, uint32_t nbytes) {
  FILE *f = fopen("tvm_bnn_out.bin", "ab");
  if (f == NULL || fwrite(data, 1, nbytes, f) != nbytes) {
    fprintf(stderr, "tvm_bnn_bm_output: cannot write tvm_bnn_out.bin\n");
    exit(3);
  }
  fclose(f);
}
void tvm_bnn_bm_begin(void) {}
void tvm_bnn_bm_end(void) {}
uint64_t tvm_bnn_bm_ticks(void) { return 0; }
