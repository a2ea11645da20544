/* bench/cmsis_nn.py, part 2: the binarizer of the int8 twin (see twin_ops.h). With the DSP extension, 4 bytes per
 * step: __ssub8 sets the GE flag of each byte lane where q - zero_point >= 0 and __sel picks +1 or -1 per lane. */
#include "twin_ops.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#endif

void twin_sign_s8(int8_t *x, int32_t n, int32_t zero_point) {
  int32_t i = 0;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  const uint32_t zp4 = 0x01010101u * (uint8_t)zero_point;
  uint32_t *w = (uint32_t *)x; /* the twin's tensors are 16-byte aligned */
  for (; i + 4 <= n; i += 4, w++) {
    (void)__ssub8((int8x4_t)*w, (int8x4_t)zp4);
    *w = (uint32_t)__sel((uint8x4_t)0x01010101u, (uint8x4_t)0xFFFFFFFFu);
  }
#endif
  for (; i < n; i++) x[i] = x[i] >= zero_point ? 1 : -1;
}
