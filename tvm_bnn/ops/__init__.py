"""Bit-packed operators: a TE definition (``compute``) and a plain numpy reference (``reference``) for each.

Layout conventions shared by every operator:

* activations are packed along channels into 64-bit words, NHWC: ``uint64[N, H, W, ceil(C/64)]``; rows of a dense
  input are packed along K: ``uint64[M, ceil(K/64)]``;
* bit ``c % 64`` of word ``c // 64`` is 1 when the value is ``>= 0`` (the value +1) and 0 for -1; padding bits past
  ``C`` are 0 in activations and weights alike, so they never count in ``popcount(a ^ w)``;
* a binary layer's integer result is the exact ±1 dot product over the valid inputs, ``dot = n_valid - 2*popcount``.
"""
WORD_BITS = 64


def num_words(bits: int) -> int:
    """Words needed to hold ``bits`` packed bits."""
    return (int(bits) + WORD_BITS - 1) // WORD_BITS
