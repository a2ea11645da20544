/* bench/cmsis_nn.py, part 2: run the generated int8 twin (twin_model.c, weights in twin_weights.c) on each of its
 * TWIN_N_INPUTS inputs, each inference one counted region (tvm_bnn's startup: -icount + SysTick). Output: the
 * twin_init() record, then the int8 outputs of every inference. */
#include <stdint.h>

#include "tvm_bnn_bm.h"
#include "twin_model.h"

static int8_t g_out[TWIN_OUT_BYTES] __attribute__((aligned(16)));

int main(void) {
  int rc = twin_init();
  for (int32_t n = 0; n < TWIN_N_INPUTS; n++) {
#ifndef TWIN_PROFILE_STEPS
    tvm_bnn_bm_begin();
#endif
    rc |= twin_run(twin_inputs[n], g_out);
#ifndef TWIN_PROFILE_STEPS
    tvm_bnn_bm_end();
#endif
    tvm_bnn_bm_output(g_out, sizeof(g_out));
  }
  return rc;
}
