/* bench/cmsis_nn.py, part 1: one CMSIS-NN int8 3x3 convolution (stride 1, pad 1, Cout = Cin) on the emulated board.
 *
 * Built by bench/cmsis_nn.py with tvm_bnn's Cortex-M startup and linker script (tvm_bnn.targets.qemu), defines:
 *   CONV_H, CONV_W, CONV_C   the input shape HxWxC (NHWC, batch 1)
 *   SCRATCH_MAX              bytes of the static scratch buffer (arm_convolve_wrapper_s8_get_buffer_size must fit)
 *   FILTER_ADDR              (optional) where the filter lives when it does not fit in the board's RAM
 * Inputs, weights and quantization parameters are pseudo-random (an LCG, filled before the counted region); the
 * counted region is the arm_convolve_wrapper_s8 call alone. Output: int32 scratch bytes, int32 status, uint32
 * checksum of the output tensor. */
#include <stdint.h>

#include "arm_nnfunctions.h"
#include "tvm_bnn_bm.h"

#define N_ACT (CONV_H * CONV_W * CONV_C)
#define N_FILTER (CONV_C * 3 * 3 * CONV_C)

static int8_t g_input[N_ACT] __attribute__((aligned(16)));
static int8_t g_output[N_ACT] __attribute__((aligned(16)));
#ifdef FILTER_ADDR
#define g_filter ((int8_t *)(FILTER_ADDR))
#else
static int8_t g_filter[N_FILTER] __attribute__((aligned(16)));
#endif
static int32_t g_bias[CONV_C], g_mult[CONV_C], g_shift[CONV_C];
static int8_t g_scratch[SCRATCH_MAX] __attribute__((aligned(16)));

static uint32_t lcg = 0x12345678u;
static uint32_t next_u32(void) {
  lcg = lcg * 1664525u + 1013904223u;
  return lcg;
}
static int8_t next_s8(void) { return (int8_t)(next_u32() >> 24); }

int main(void) {
  for (int32_t i = 0; i < N_ACT; i++) g_input[i] = next_s8();
  for (int32_t i = 0; i < N_FILTER; i++) {
    int8_t v = next_s8();
    g_filter[i] = v == -128 ? -127 : v; /* symmetric int8 weights: [-127, 127] */
  }
  for (int32_t c = 0; c < CONV_C; c++) {
    g_bias[c] = (int32_t)(next_u32() >> 16) - 32768;
    g_mult[c] = (int32_t)(0x40000000u + (next_u32() >> 2)); /* Q31 in [0.5, 1) as TFLite's QuantizeMultiplier */
    g_shift[c] = -12 - (int32_t)(next_u32() >> 30);         /* right shifts of 12..15 */
  }
  const cmsis_nn_conv_params conv = {.input_offset = 3, .output_offset = -5, .stride = {1, 1}, .padding = {1, 1},
                                     .dilation = {1, 1}, .activation = {-128, 127}};
  const cmsis_nn_per_channel_quant_params quant = {g_mult, g_shift};
  const cmsis_nn_dims in_dims = {1, CONV_H, CONV_W, CONV_C};
  const cmsis_nn_dims filter_dims = {CONV_C, 3, 3, CONV_C};
  const cmsis_nn_dims bias_dims = {1, 1, 1, CONV_C};
  const cmsis_nn_dims out_dims = {1, CONV_H, CONV_W, CONV_C};
  int32_t info[2];
  info[0] = arm_convolve_wrapper_s8_get_buffer_size(&conv, &in_dims, &filter_dims, &out_dims);
  if (info[0] > SCRATCH_MAX) {
    info[1] = -100;
    tvm_bnn_bm_output(info, sizeof(info));
    return 2;
  }
  const cmsis_nn_context ctx = {g_scratch, info[0]};

  tvm_bnn_bm_begin();
  info[1] = arm_convolve_wrapper_s8(&ctx, &conv, &quant, &in_dims, g_input, &filter_dims, g_filter, &bias_dims, g_bias,
                                    &out_dims, g_output);
  tvm_bnn_bm_end();

  uint32_t sum = 0u;
  for (int32_t i = 0; i < N_ACT; i++) sum = sum * 31u + (uint8_t)g_output[i];
  tvm_bnn_bm_output(info, sizeof(info));
  tvm_bnn_bm_output(&sum, sizeof(sum));
  return info[1] != 0;
}
