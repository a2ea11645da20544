/* bench/cmsis_nn.py, part 2: the one op of the int8 twin that CMSIS-NN has no kernel for. */
#ifndef TWIN_OPS_H
#define TWIN_OPS_H
#include <stdint.h>

/* The binarizer of a BNN layer's input (x >= 0 -> +1, else -1) on an int8 tensor with zero point `zero_point`,
 * in place: q >= zero_point -> 1, else -1 (the result is an int8 tensor of scale 1, zero point 0). */
void twin_sign_s8(int8_t *x, int32_t n, int32_t zero_point);

#endif
