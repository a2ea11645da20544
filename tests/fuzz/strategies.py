"""Random binarized networks for the differential fuzzer (issue 6): specs, the PyTorch model built from a spec, and
the reference evaluation the compiled model is checked against.

A *spec* (:class:`NetSpec`) is a plain, printable description: one or more independent *branches*, each a model
input followed by a chain of layer specs (binary / float conv and dense layers, BatchNorm, pooling, residual blocks,
elementwise ops). Weights and statistics come from per-layer integer seeds, so hypothesis shrinks the architecture
and the seeds, and a failing spec rebuilds the same model.

:class:`FuzzNet` runs in three modes:

* ``"torch"``: float32, every binarization in its literal form (``torch.sign``, STE forms, ``tvm_bnn.nn`` ...).
  This is what gets exported and compiled, and what "PyTorch's output" means.
* ``"ref"``: float64, every binarization computes what the compiled code computes (REF_FORMS): its two exact
  values (+-1, +-s, {0, 1}, {-1, 3}) on the exact test of its form (``x >= t``, strict ``x > t``, decreasing
  ``x < 0``, per-channel ``t``), with ``torch.sign`` taken by the tie rule ``sign(0) -> +1`` in a bit-packed layer
  (README "Tie rule" / "STE forms"). Records the value each binarization compares with its threshold (``x - t``).
* ``"abs"``: float64 magnitude bounds: each tensor is replaced by a bound on the magnitudes its computation adds up
  (conv/linear with |W|, BatchNorm with |gamma / std| (x + |mean|) + |beta|, binarizations -> their largest |value|,
  a threshold t adds |t|, ...). A compared value ``x - t`` with ``0 < |x - t| < TIE_RTOL * bound`` is within float
  rounding of the threshold: float32 PyTorch, float32 TVM and the float64 threshold fold may legitimately binarize
  it differently (README: "within a rounding of 0"), so such an example is rejected. Exact ties are kept: their
  result is defined by the form (the tie rule for ``torch.sign``, the comparison otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from tvm_bnn import nn as bnn

TIE_RTOL = 1e-5  # relative distance to 0 (of the magnitude bound) below which a binarization is ambiguous


# --------------------------------------------------------------------------------------------------------------------
# binarization forms (activations) and binary weight forms, taken from README "What is recognised" / test_forms.py

def ge_sign(x):
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _bireal_poly(x):
    m1 = (x < -1).to(x.dtype)
    m2 = (x < 0).to(x.dtype)
    m3 = (x < 1).to(x.dtype)
    out = -1 * m1 + (x * x + 2 * x) * (1 - m1)
    out = out * m2 + (-x * x + 2 * x) * (1 - m2)
    return out * m3 + 1 * (1 - m3)


def _ste_add(x):
    return x + (torch.sign(x) - x).detach()


def _brevitas(x, b):
    """Brevitas' 1-bit activation (SignedBinaryActPerTensorConst at eval): clamp to [-s, s] written as two wheres,
    sign by a compare, then the scale: values +-s."""
    s = b.s
    c = torch.where(x > s, s, x)
    c = torch.where(c < -s, -s, c)
    return ((c >= 0).float() * 2 - 1) * s


ACT_FORMS = {
    "sign": torch.sign,
    "where_ge": ge_sign,
    "where_ones": lambda x: torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x)),
    "ste_add": _ste_add,
    "ste_add_where": lambda x: x + (ge_sign(x) - x).detach(),
    "bireal_ste": lambda x: torch.sign(x).detach() - _bireal_poly(x).detach() + _bireal_poly(x),
    "reactnet_ste": lambda x: torch.sign(x).detach() - torch.tanh(x).detach() + torch.tanh(x),
    "detach_ste": lambda x: torch.sign(x).detach() + x - x.detach(),
    "hardtanh_sign": lambda x: torch.sign(F.hardtanh(x)),
    "hardtanh_where": lambda x: ge_sign(F.hardtanh(x, -0.5, 2.0)),
    "hardtanh_ste": lambda x: _ste_add(F.hardtanh(x)),
    "binary_sign": bnn.binary_sign,
    "BinarySign": bnn.BinarySign,  # module classes: a fresh instance per use
    "StochasticSign": bnn.StochasticSign,
    # threshold at 0 but strict: x > 0 (exact at 0 in the compiled model too: another threshold, not the tie rule)
    "where_gt": lambda x: torch.where(x > 0, 1.0, -1.0),
    # decreasing in x
    "neg_sign": lambda x: -torch.sign(x),
    "where_lt": lambda x: torch.where(x < 0, 1.0, -1.0),
    # two values other than +-1: {0, 1} (mid 0.5 +- 0.5), {-1, 3} (mid 1 +- 2: zero padding is neither value)
    "ge01": lambda x: (x >= 0).float(),
    "where_m1_3": lambda x: torch.where(x >= 0, 3.0, -1.0),
    # forms with per-layer parameters (PARAM_FORMS: called as fn(x, binarize_module))
    "brevitas": _brevitas,  # s = 0.75: every output of a +-1-weight layer is an exact multiple of 0.75
    "brevitas_rand": _brevitas,  # s random per layer: outputs are float multiples of s (rounded)
    "sign_sub_t": lambda x, b: torch.sign(x - b.threshold(x)),  # per-channel threshold t (some 0, some integers)
    "where_ge_t": lambda x, b: torch.where(x >= b.threshold(x), 1.0, -1.0),
    "gt01_t": lambda x, b: (x > b.threshold(x)).float(),
    # few-level activations (computed in bit planes, W1A2 / W1A3): a 2-bit signed narrow quantizer {-1, 0, 1}
    # (Brevitas' QuantIdentity at bit width 2), DoReFa's 4 levels {0, 1/3, 2/3, 1} and its 3-bit 8 levels
    "round3": lambda x: torch.clamp(torch.round(x), -1, 1),
    "dorefa4": lambda x: torch.round(torch.clamp(x, 0, 1) * 3) / 3,
    "dorefa8": lambda x: torch.round(torch.clamp(x, 0, 1) * 7) / 7,
}
# few-level forms: where their level changes (the values compared with 0 for the near-tie check)
LEVEL_STEPS = {"round3": (-0.5, 0.5), "dorefa4": (1 / 6, 1 / 2, 5 / 6),
               "dorefa8": tuple((k + 0.5) / 7 for k in range(7))}
PARAM_FORMS = {"brevitas", "brevitas_rand", "sign_sub_t", "where_ge_t", "gt01_t"}
THRESHOLD_FORMS = {"sign_sub_t", "where_ge_t", "gt01_t"}  # compare x - t with 0
SCALE_FORMS = {"brevitas": 0.75, "brevitas_rand": None}  # None: random per layer
# forms built on torch.sign: PyTorch gives 0 at an input of exactly 0, the compiled model +1 (documented)
TIE_DIFFERS = {"sign", "ste_add", "bireal_ste", "reactnet_ste", "detach_ste", "hardtanh_sign", "hardtanh_ste",
               "neg_sign", "sign_sub_t"}
# straight-through forms: PyTorch's result is +-1 only to a rounding (documented), the compiled model's exactly
SMOOTH_OPS = {"tanh", "sigmoid", "silu"}  # elementwise ops whose value at a point depends on the libm's rounding
STE_FORMS = {"ste_add", "ste_add_where", "bireal_ste", "reactnet_ste", "detach_ste", "hardtanh_ste"}
# forms whose result is not decided by the sign of a value that is >= 0 by construction (after a ReLU): strict
# x > 0 (0 vs a tiny positive), and thresholds t != 0. Near ties are checked there whatever the input.
NONNEG_UNSAFE = {"where_gt", "gt01_t"} | THRESHOLD_FORMS | set(LEVEL_STEPS)
# the compiled semantics in float64: ``sign`` is the tie rule (x >= 0 -> +1) in a bit-packed layer, torch.sign in
# a layer that stays float (README "Tie rule"); every other form is exact at its threshold. Default: sign(x).
REF_FORMS = {
    "where_gt": lambda x, b, sign: torch.where(x > 0, 1.0, -1.0).to(x.dtype),
    "neg_sign": lambda x, b, sign: -sign(x),
    "where_lt": lambda x, b, sign: torch.where(x < 0, 1.0, -1.0).to(x.dtype),
    "ge01": lambda x, b, sign: (x >= 0).to(x.dtype),
    "where_m1_3": lambda x, b, sign: torch.where(x >= 0, 3.0, -1.0).to(x.dtype),
    "brevitas": lambda x, b, sign: ge_sign(x) * b.s,
    "brevitas_rand": lambda x, b, sign: ge_sign(x) * b.s,
    "sign_sub_t": lambda x, b, sign: sign(x - b.threshold(x)),
    "where_ge_t": lambda x, b, sign: ge_sign(x - b.threshold(x)),
    "gt01_t": lambda x, b, sign: (x > b.threshold(x)).to(x.dtype),
    "round3": lambda x, b, sign: torch.clamp(torch.round(x), -1, 1),
    "dorefa4": lambda x, b, sign: torch.round(torch.clamp(x, 0, 1) * 3) / 3,
    "dorefa8": lambda x, b, sign: torch.round(torch.clamp(x, 0, 1) * 7) / 7,
}
# the two values (low, high) of a form; default +-1
VALUES = {"ge01": lambda b: (0.0, 1.0), "gt01_t": lambda b: (0.0, 1.0), "where_m1_3": lambda b: (-1.0, 3.0),
          "brevitas": lambda b: (-float(b.s), float(b.s)), "brevitas_rand": lambda b: (-float(b.s), float(b.s)),
          "dorefa4": lambda b: (0.0, 1.0), "dorefa8": lambda b: (0.0, 1.0)}  # few-level forms: lowest, highest
# the output domain of a binary layer with +-1 weights and no bias/BN on this form: "int" (exact: integers, or
# exact multiples of 0.75 / halves), "scaled" (float multiples of a random s, rounded); default "int"
ACT_DOMAIN = {"brevitas_rand": "scaled", "dorefa4": "scaled", "dorefa8": "scaled"}
# the tvm_bnn.nn layers binarize internally with binary_sign
MODULE_FORM = "tvm_bnn.nn"

WEIGHT_FORMS = ["sign", "const_alpha", "xnor_mean", "where_ge", "stored_pm1", "stored_alpha"]
PM1_WEIGHT_FORMS = {"sign", "where_ge", "stored_pm1"}  # alpha == 1: integer outputs
# 3-4 level weights (a sum of weight planes, W2): halves and integers, exact like +-1
LOW_BIT_WEIGHT_FORMS = ("ternary", "two_bit")
STORED_FORMS = ("stored_pm1", "stored_alpha") + LOW_BIT_WEIGHT_FORMS  # buffers holding the weights themselves


def _alpha_shape(w):
    return (-1,) + (1,) * (w.dim() - 1)


def weight_of(form, w, alpha):
    """The effective binary weight for ``form`` from the raw parameter ``w`` (no zeros) and ``alpha`` (> 0)."""
    if form == "sign":
        return torch.sign(w)
    if form == "const_alpha":
        return torch.sign(w) * alpha.view(_alpha_shape(w))
    if form == "xnor_mean":
        return torch.sign(w) * w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    if form == "where_ge":
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    if form in STORED_FORMS + ("float",):
        return w  # already materialised by the layer (a buffer of +-alpha, few levels, or float)
    raise ValueError(form)


# --------------------------------------------------------------------------------------------------------------------
# specs

@dataclass
class BinConv:
    """[F.pad pre] -> binarize -> [max-pool] -> [F.pad post] -> conv2d(binary W) -> [BN].

    The padding rule (README "Padding", passes/binarize.py::conv_padding, binarizers.py::_padded): F.pad after the
    binarization may pad with 0 or one of the two values; any other value leaves the layer float ("neither 0 nor one
    of its two values"). F.pad with one of the two values plus the conv's own zero padding are two padding values in
    one conv: refused too, unless the F.pad value is 0 or 0 is that value (the low value of {0, 1})."""
    cout: int
    kernel: tuple
    stride: tuple
    dilation: tuple
    padding: tuple  # symmetric conv padding (ph, pw)
    fpad: tuple = (0, 0, 0, 0)  # F.pad widths (left, right, top, bottom)
    fpad_pre: bool = False  # F.pad before the binarization (pads float 0 -> tie -> +1) instead of after (0 in +-1)
    fpad_fill: int = 0  # F.pad after the binarization pads with 0 (0), its high value (1), its low value (-1), or
    # (2) a value that is neither 0 nor one of the two (halfway between the mid-point and the high value): refused;
    # (3) mode="replicate" (the edge values: a gather of the bits, no padding value)
    act: str = "where_ge"  # an ACT_FORMS key, or MODULE_FORM (tvm_bnn.nn.BinaryConv2d)
    wform: str = "sign"  # WEIGHT_FORMS key, or "xnor" / None scale for the module; "ternary" / "two_bit": 3-4 levels (W2)
    pool: tuple | None = None  # max-pool (kernel, stride, padding) of the binarized tensor
    groups: int = 1  # > 1: a grouped conv (binarized, one kernel per group)
    bias: bool = False
    bn: bool = False
    tap: bool = False  # the layer's output is also a model output
    seed: int = 0


@dataclass
class BinDense:
    """[flatten] -> binarize (before or after the flatten) -> linear(binary W) -> [BN1d]."""
    out: int
    act: str = "where_ge"
    wform: str = "sign"
    flatten_first: bool = True
    bias: bool = False
    bn: bool = False
    tap: bool = False
    seed: int = 0
    matmul: bool = False  # x @ W.t() (+ b) instead of F.linear


@dataclass
class FloatConv:
    """conv2d with float weights (optionally on a binarized input, or with binary weights on a float input)."""
    cout: int
    kernel: tuple
    stride: tuple
    dilation: tuple
    padding: tuple
    act: str | None = None  # binarize the input first (the layer stays float: weights not binary)
    wform: str = "float"  # "float", or a binary weight form on a float input (stays float: input not binarized)
    bias: bool = True
    bn: bool = False
    tap: bool = False
    seed: int = 0


@dataclass
class FloatDense:
    out: int
    act: str | None = None
    bias: bool = True
    bn: bool = False
    tap: bool = False
    seed: int = 0


@dataclass
class BN:
    seed: int = 0


@dataclass
class Elementwise:
    op: str  # relu, hardtanh, leaky_relu, prelu, tanh, sigmoid, silu, scale_shift
    seed: int = 0


@dataclass
class Pool:
    op: str  # "max" or "avg"
    kernel: int
    stride: int
    padding: int
    ceil_mode: bool = False
    count_include_pad: bool = True  # avg only


@dataclass
class Residual:
    """x + BN(binary conv(binarize(x))) with 'same' geometry (Bi-Real-Net block), then an optional elementwise."""
    kernel: int
    dilation: int
    act: str = "where_ge"
    wform: str = "sign"
    post: str | None = None
    tap: bool = False
    seed: int = 0


@dataclass
class Fork:
    """b = binarize(x); BN(conv_k(b)) + BN(conv_1x1(b)): one binarized tensor read by two binary convs."""
    cout: int
    kernel: int
    act: str = "where_ge"
    wform: str = "sign"
    bn: bool = True
    seed: int = 0


@dataclass
class Branch:
    batch: int
    shape: tuple  # (C, H, W) or (F,)
    layers: list
    input_seed: int = 0
    input_zeros: float = 0.0  # fraction of exact zeros in the input (ties at a binarized model input)


@dataclass
class NetSpec:
    branches: list

    def __repr__(self):
        return "NetSpec(branches=[\n" + ",\n".join(
            f"  Branch(batch={b.batch}, shape={b.shape}, input_seed={b.input_seed}, input_zeros={b.input_zeros},"
            f" layers=[\n" + "".join(f"    {layer!r},\n" for layer in b.layers) + "  ])" for b in self.branches) + "])"


# --------------------------------------------------------------------------------------------------------------------
# the model

class Ctx:
    """Shared by every layer of a FuzzNet: the mode and what the binarizations saw."""

    def __init__(self):
        self.mode = "torch"
        self.seen = []  # ref mode: (form, value compared with the threshold (float64), nonneg, packed)
        self.bounds = []  # abs mode: magnitude bound of the same value
        self.relu_near = 0  # abs mode: ReLU inputs within rounding of 0 (a hidden near tie for NONNEG_UNSAFE forms)


class Binarize(torch.nn.Module):
    """``packed``: the consumer is meant to be binarized (bit-packed: x >= 0 -> +1). A consumer that stays float
    (refused: two padding values; float weights) computes the binarization in float, as
    PyTorch does: torch.sign(0) = 0 there; the STE forms are still exact (canonicalized to the sign).

    ``channels``/``seed``: the per-channel thresholds ``t`` (axis 1 of the input) and the scale ``s`` of the forms
    that have them (PARAM_FORMS), drawn from the seed."""

    def __init__(self, ctx, form, nonneg=False, packed=True, channels=1, seed=0):
        super().__init__()
        self.ctx, self.form, self.nonneg, self.packed = ctx, form, nonneg, packed
        # the binarized tensor is the model input itself (first layer of a branch): its exact zeros are 0 by chance,
        # and a packed torch.sign takes them as +1 (README "Tie rule"); everywhere else a zero is the model's own
        # (a ReLU, a BatchNorm with gamma == beta == 0, an integer-valued binary layer), and sign(0) = 0 is kept
        self.chance = False
        # the binarized tensor is a float conv / dense output (or elementwise of one): an exact 0 there is a sum that
        # cancelled, which another summation order or an FMA leaves a rounding away from 0 (README: a pre-activation
        # within a rounding of 0 may binarize differently): such zeros are near ties, not tie-rule cases
        self.cancelled = False
        fn = ACT_FORMS.get(form)
        self.fn = fn().eval() if isinstance(fn, type) else fn
        rng = _rng(seed + 3)
        if form in SCALE_FORMS:
            s = SCALE_FORMS[form] or rng.uniform(0.1, 2.0)
            self.register_buffer("s", torch.tensor(float(np.float32(s)), dtype=torch.float32))
        if form in THRESHOLD_FORMS:
            self.register_buffer("t", _tensor(_random_thresholds(rng, channels)))

    def _tie_sign(self, x):
        """torch.sign with sign(0) -> +1 (the tie rule, for a sign of the model input's own zeros)."""
        return torch.where(x == 0, torch.ones_like(x), torch.sign(x))

    def threshold(self, x):
        return self.t.view((-1,) + (1,) * (x.dim() - 2))

    def values(self):
        """(low, high): the two values of the binarized tensor (float32-exact Python floats)."""
        return VALUES[self.form](self) if self.form in VALUES else (-1.0, 1.0)

    def ref(self, x, sign):
        """The binarized tensor in float64 (compiled semantics, ``sign`` for the forms that use torch.sign)."""
        return REF_FORMS[self.form](x, self, sign) if self.form in REF_FORMS else sign(x)

    def forward(self, x):
        mode, form = self.ctx.mode, self.form
        if mode == "torch":
            return self.fn(x, self) if form in PARAM_FORMS else self.fn(x)
        t = self.threshold(x) if form in THRESHOLD_FORMS else None
        if mode == "ref":  # record the value compared with the threshold (each step's, for a few-level form)
            tied = self.packed and self.chance and form in TIE_DIFFERS
            for step in LEVEL_STEPS.get(form, (0.0,)):
                self.ctx.seen.append((form, (x.detach() - t if t is not None else x.detach()) - step, self.nonneg,
                                      tied, self.cancelled))
            self._ref_in = x.detach()
            # the forms without torch.sign (where(x >= 0, 1, -1), the default of REF_FORMS) are exact at 0 anyway
            return self.ref(x, self._tie_sign if tied else torch.sign if form in TIE_DIFFERS else ge_sign)
        for step in LEVEL_STEPS.get(form, (0.0,)):
            self.ctx.bounds.append((x.detach() + t.abs() if t is not None else x.detach()) + abs(step))
        return torch.ones_like(x) * max(abs(v) for v in self.values())


def _random_thresholds(rng, n):
    """Per-channel thresholds: some exactly 0, some integers (exact ties on integer-valued inputs; not +-1, where a
    hardtanh clamps), the rest generic."""
    t = rng.uniform(-1.5, 1.5, n)
    u = rng.random(n)
    t[u < 0.3] = 0.0
    ints = (u >= 0.3) & (u < 0.5)
    t[ints] = rng.choice([-3.0, -2.0, 2.0, 3.0], int(ints.sum()))
    return t


def _rng(seed):
    return np.random.default_rng(seed)


def _tensor(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))


def _random_bn(ctx, n, seed, dims):
    """Eval BatchNorm with gamma of both signs and some exactly 0 (then beta sometimes exactly 0: a tie)."""
    rng = _rng(seed)
    bn = (torch.nn.BatchNorm2d if dims == 4 else torch.nn.BatchNorm1d)(n)
    gamma = rng.uniform(-1.5, 1.5, n)
    gamma[rng.random(n) < 0.2] = 0.0
    beta = rng.uniform(-1, 1, n)
    beta[(gamma == 0) & (rng.random(n) < 0.3)] = 0.0
    with torch.no_grad():
        bn.weight.copy_(_tensor(gamma))
        bn.bias.copy_(_tensor(beta))
        bn.running_mean.copy_(_tensor(rng.uniform(-2, 2, n)))
        bn.running_var.copy_(_tensor(rng.uniform(0.3, 3, n)))
    return BNMod(ctx, bn.eval())


class BNMod(torch.nn.Module):
    def __init__(self, ctx, bn):
        super().__init__()
        self.ctx, self.bn = ctx, bn

    def forward(self, x):
        if self.ctx.mode != "abs":
            return self.bn(x)
        b = self.bn
        shape = (1, -1) + (1,) * (x.dim() - 2)
        g = (b.weight.abs() / torch.sqrt(b.running_var + b.eps)).view(shape)
        return g * (x + b.running_mean.abs().view(shape)) + b.bias.abs().view(shape)


def _binary_param(shape, form, rng):
    w = rng.standard_normal(shape)
    w[np.abs(w) < 1e-3] = 0.5  # no zeros: sign(0) = 0 would make the weight non-binary
    if form == "ternary":  # sign of weights with zeros: {-1, 0, 1}, two weight planes
        w[rng.random(shape) < rng.uniform(0.05, 0.5)] = 0.0
        return np.sign(w)
    if form == "two_bit":  # 2-bit uniform, asymmetric: {-0.5, 0, 0.5, 1}, two planes and an offset
        return rng.integers(-1, 3, shape) * 0.5
    if form == "stored_pm1":
        return np.sign(w)
    if form == "stored_alpha":
        return np.sign(w) * rng.uniform(0.1, 2.0, (shape[0],) + (1,) * (len(shape) - 1))
    return w


class BinConvMod(torch.nn.Module):
    def __init__(self, ctx, s: BinConv, cin, nonneg):
        super().__init__()
        self.ctx, self.s = ctx, s
        # F.pad's value after the binarization; why the padding leaves the layer float (None: it does not)
        self.pad_value, self.refused_pad = 0.0, None
        rng = _rng(s.seed)
        shape = (s.cout, cin // s.groups) + tuple(s.kernel)
        if s.act == MODULE_FORM:
            self.conv = bnn.BinaryConv2d(cin, s.cout, s.kernel, stride=s.stride, padding=s.padding,
                                         dilation=s.dilation, groups=s.groups, bias=s.bias,
                                         scale="xnor" if s.wform == "xnor" else None)
            with torch.no_grad():
                self.conv.weight.copy_(_tensor(_binary_param(shape, "sign", rng)))
                if s.bias:
                    self.conv.bias.copy_(_tensor(rng.uniform(-2, 2, s.cout)))
            self.binarize = Binarize(ctx, MODULE_FORM, nonneg)  # records only; the module binarizes
        else:
            self.binarize = Binarize(ctx, s.act, nonneg, channels=cin, seed=s.seed)
            low, high = self.binarize.values()
            if s.fpad_fill in (1, -1, 2) and not s.fpad_pre and any(s.fpad):
                if s.fpad_fill == 2:  # neither 0 nor low/high: +-1 -> 0.5, {0, 1} -> 0.75, {-1, 3} -> 2, +-s -> s/2
                    self.pad_value = float(np.float32(0.5 * high + 0.25 * (low + high)))
                    self.refused_pad = "bad_pad"
                else:
                    self.pad_value = high if s.fpad_fill > 0 else low

                    def kind(v):
                        return 1 if v == high else -1 if v == low else 0

                    if any(s.padding) and kind(0.0) != kind(self.pad_value):
                        self.refused_pad = "two_pads"
            self.binarize.packed = self.refused_pad is None
            w = _binary_param(shape, s.wform, rng)
            if s.wform in STORED_FORMS:
                self.register_buffer("w", _tensor(w))
            else:
                self.w = torch.nn.Parameter(_tensor(w))
            self.register_buffer("alpha", _tensor(np.linspace(0.5, 1.5, s.cout)))
            self.b = torch.nn.Parameter(_tensor(rng.uniform(-2, 2, s.cout))) if s.bias else None
        self.bn = _random_bn(ctx, s.cout, s.seed + 1, 4) if s.bn else None

    def forward(self, x):
        s, mode = self.s, self.ctx.mode
        if s.fpad_pre:
            x = F.pad(x, s.fpad)
        if s.act == MODULE_FORM:
            if mode == "abs":
                self.binarize(x)
                c = self.conv
                w = bnn.binary_sign(c.weight.detach())
                if c.scale == "xnor":
                    w = w * c.weight.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
                y = F.conv2d(torch.ones_like(x), w.abs(), c.bias.abs() if c.bias is not None else None, c.stride,
                             c.padding, c.dilation, c.groups)
            else:
                if mode == "ref":
                    self.binarize(x)
                y = self.conv(x)
        else:
            b = self.binarize(x)
            if s.pool is not None:
                b = F.max_pool2d(b, s.pool[0], s.pool[1], s.pool[2])
            if not s.fpad_pre and s.fpad_fill == 3:
                b = F.pad(b, s.fpad, mode="replicate")
            elif not s.fpad_pre:
                b = F.pad(b, s.fpad, value=abs(self.pad_value) if mode == "abs" else self.pad_value)
            w = weight_of(s.wform, self.w, self.alpha)
            bias = self.b
            if mode == "abs":
                w, bias = w.abs(), bias.abs() if bias is not None else None
            y = F.conv2d(b, w, bias, s.stride, s.padding, s.dilation, s.groups)
        return self.bn(y) if self.bn is not None else y


class BinDenseMod(torch.nn.Module):
    def __init__(self, ctx, s: BinDense, fin, nonneg, cin=None):
        super().__init__()
        self.ctx, self.s = ctx, s
        rng = _rng(s.seed)
        if s.act == MODULE_FORM:
            self.fc = bnn.BinaryLinear(fin, s.out, bias=s.bias, scale="xnor" if s.wform == "xnor" else None)
            with torch.no_grad():
                self.fc.weight.copy_(_tensor(_binary_param((s.out, fin), "sign", rng)))
                if s.bias:
                    self.fc.bias.copy_(_tensor(rng.uniform(-2, 2, s.out)))
            self.binarize = Binarize(ctx, MODULE_FORM, nonneg)
        else:
            self.binarize = Binarize(ctx, s.act, nonneg, channels=fin if s.flatten_first or cin is None else cin,
                                     seed=s.seed)
            w = _binary_param((s.out, fin), s.wform, rng)
            if s.wform in STORED_FORMS:
                self.register_buffer("w", _tensor(w))
            else:
                self.w = torch.nn.Parameter(_tensor(w))
            self.register_buffer("alpha", _tensor(np.linspace(0.5, 1.5, s.out)))
            self.b = torch.nn.Parameter(_tensor(rng.uniform(-2, 2, s.out))) if s.bias else None
        self.bn = _random_bn(ctx, s.out, s.seed + 1, 2) if s.bn else None

    def forward(self, x):
        s, mode = self.s, self.ctx.mode
        if s.flatten_first:
            x = x.flatten(1)
        if s.act == MODULE_FORM:
            x = x.flatten(1)
            if mode == "abs":
                self.binarize(x)
                fc = self.fc
                w = bnn.binary_sign(fc.weight.detach())
                if fc.scale == "xnor":
                    w = w * fc.weight.detach().abs().mean(dim=1, keepdim=True)
                y = F.linear(torch.ones_like(x), w.abs(), fc.bias.abs() if fc.bias is not None else None)
            else:
                if mode == "ref":
                    self.binarize(x)
                y = self.fc(x)
        else:
            b = self.binarize(x).flatten(1)
            w = weight_of(s.wform, self.w, self.alpha)
            bias = self.b
            if mode == "abs":
                w, bias = w.abs(), bias.abs() if bias is not None else None
            if s.matmul:
                y = torch.matmul(b, w.t())
                y = y + bias if bias is not None else y
            else:
                y = F.linear(b, w, bias)
        return self.bn(y) if self.bn is not None else y


class FloatConvMod(torch.nn.Module):
    def __init__(self, ctx, s: FloatConv, cin, nonneg):
        super().__init__()
        self.ctx, self.s = ctx, s
        rng = _rng(s.seed)
        shape = (s.cout, cin) + tuple(s.kernel)
        if s.wform == "float":
            w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        else:
            w = _binary_param(shape, s.wform, rng)
        self.w = torch.nn.Parameter(_tensor(w))
        self.register_buffer("alpha", _tensor(np.linspace(0.5, 1.5, s.cout)))
        self.b = torch.nn.Parameter(_tensor(rng.uniform(-1, 1, s.cout))) if s.bias else None
        # one weight per output channel is +-alpha: binary weights, so the layer binarizes
        self.few_weights = few_weights(cin, s)
        self.binarize = Binarize(ctx, s.act, nonneg, packed=self.few_weights, channels=cin,
                                 seed=s.seed) if s.act else None
        self.bn = _random_bn(ctx, s.cout, s.seed + 1, 4) if s.bn else None

    def forward(self, x):
        s = self.s
        if self.ctx.mode == "ref":
            self._ref_in = x.detach()
        if self.binarize is not None:
            x = self.binarize(x)
        w, bias = weight_of(s.wform, self.w, self.alpha), self.b
        if self.ctx.mode == "abs":
            w, bias = w.abs(), bias.abs() if bias is not None else None
        y = F.conv2d(x, w, bias, s.stride, s.padding, s.dilation)
        return self.bn(y) if self.bn is not None else y


class FloatDenseMod(torch.nn.Module):
    def __init__(self, ctx, s: FloatDense, fin, nonneg):
        super().__init__()
        self.ctx, self.s = ctx, s
        rng = _rng(s.seed)
        self.w = torch.nn.Parameter(_tensor(rng.standard_normal((s.out, fin)) / np.sqrt(fin)))
        self.b = torch.nn.Parameter(_tensor(rng.uniform(-1, 1, s.out))) if s.bias else None
        self.few_weights = few_weights(fin, s)
        self.binarize = Binarize(ctx, s.act, nonneg, packed=self.few_weights, channels=fin,
                                 seed=s.seed) if s.act else None
        self.bn = _random_bn(ctx, s.out, s.seed + 1, 2) if s.bn else None

    def forward(self, x):
        x = x.flatten(1)
        if self.ctx.mode == "ref":
            self._ref_in = x.detach()
        if self.binarize is not None:
            x = self.binarize(x)
        w, bias = self.w, self.b
        if self.ctx.mode == "abs":
            w, bias = w.abs(), bias.abs() if bias is not None else None
        y = F.linear(x, w, bias)
        return self.bn(y) if self.bn is not None else y


class ElementwiseMod(torch.nn.Module):
    def __init__(self, ctx, s: Elementwise, channels):
        super().__init__()
        self.ctx, self.s = ctx, s
        rng = _rng(s.seed)
        self.prelu = None
        if s.op == "prelu":
            self.prelu = torch.nn.PReLU(channels)
            with torch.no_grad():
                self.prelu.weight.copy_(_tensor(rng.uniform(-0.5, 0.5, channels)))
        self.register_buffer("scale", _tensor(rng.uniform(-2, 2, channels)))
        self.register_buffer("shift", _tensor(rng.uniform(-1, 1, channels)))

    def forward(self, x):
        op = self.s.op
        if self.ctx.mode == "ref":
            self._ref_in = x.detach()  # for the abs pass, which follows
        if self.ctx.mode == "abs":  # every op here is 1-Lipschitz with |f(x)| <= |x| (+1 for sigmoid)
            if op == "relu":  # relu(tiny negative) = 0 exactly in the reference, tiny positive in float32 PyTorch
                t = self._ref_in.numpy()
                self.ctx.relu_near += int(((t != 0) & (np.abs(t) < np.maximum(TIE_RTOL * x.numpy(), 1e-30))).sum())
            if op == "sigmoid":
                return x + 1
            if op == "silu":  # error ~ |silu'(x)| * error(x) + rounding of silu(x): tight on the flat negative tail
                t = self._ref_in
                sig = torch.sigmoid(t)
                return (sig * (1 + t * (1 - sig))).abs() * x + (t * sig).abs()
            if op == "scale_shift":
                shape = (1, -1) + (1,) * (x.dim() - 2)
                return x * self.scale.abs().view(shape) + self.shift.abs().view(shape)
            return x
        if op == "relu":
            return F.relu(x)
        if op == "hardtanh":
            return F.hardtanh(x)
        if op == "leaky_relu":
            return F.leaky_relu(x, 0.1)
        if op == "prelu":
            return self.prelu(x)
        if op == "tanh":
            return torch.tanh(x)
        if op == "sigmoid":
            return torch.sigmoid(x)
        if op == "silu":
            return F.silu(x)
        if op == "scale_shift":
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return x * self.scale.view(shape) + self.shift.view(shape)
        raise ValueError(op)


class PoolMod(torch.nn.Module):
    def __init__(self, ctx, s: Pool):
        super().__init__()
        self.ctx, self.s = ctx, s

    def forward(self, x):
        s = self.s
        if s.op == "max":
            return F.max_pool2d(x, s.kernel, s.stride, s.padding, ceil_mode=s.ceil_mode)
        return F.avg_pool2d(x, s.kernel, s.stride, s.padding, ceil_mode=s.ceil_mode,
                            count_include_pad=s.count_include_pad)


class ResidualMod(torch.nn.Module):
    def __init__(self, ctx, s: Residual, cin, nonneg):
        super().__init__()
        self.ctx, self.s = ctx, s
        p = s.dilation * (s.kernel // 2)
        conv = BinConv(cout=cin, kernel=(s.kernel, s.kernel), stride=(1, 1), dilation=(s.dilation, s.dilation),
                       padding=(p, p), act=s.act, wform=s.wform, bn=True, seed=s.seed)
        self.body = BinConvMod(ctx, conv, cin, nonneg)
        self.post = ElementwiseMod(ctx, Elementwise(s.post, s.seed + 2), cin) if s.post else None

    def forward(self, x):
        y = self.body(x) + x
        return self.post(y) if self.post is not None else y


def few_weights(cin, s):
    """A float-weight layer with at most 4 weights per output channel takes at most 4 values per channel: weight
    planes (one weight: +-alpha, binary; 2-4: W2, passes/weights.weight_planes). It is binarized."""
    return cin * (int(np.prod(s.kernel)) if isinstance(s, FloatConv) else 1) <= 4


class ForkMod(torch.nn.Module):
    def __init__(self, ctx, s: Fork, cin, nonneg):
        super().__init__()
        self.ctx, self.s = ctx, s
        rng = _rng(s.seed)
        self.binarize = Binarize(ctx, s.act, nonneg, channels=cin, seed=s.seed)
        self.w1 = torch.nn.Parameter(_tensor(_binary_param((s.cout, cin, s.kernel, s.kernel), s.wform, rng)))
        self.w2 = torch.nn.Parameter(_tensor(_binary_param((s.cout, cin, 1, 1), s.wform, rng)))
        self.register_buffer("alpha", _tensor(np.linspace(0.5, 1.5, s.cout)))
        self.bn1 = _random_bn(ctx, s.cout, s.seed + 1, 4) if s.bn else None
        self.bn2 = _random_bn(ctx, s.cout, s.seed + 2, 4) if s.bn else None

    def forward(self, x):
        s = self.s
        b = self.binarize(x)
        w1, w2 = weight_of(s.wform, self.w1, self.alpha), weight_of(s.wform, self.w2, self.alpha)
        if self.ctx.mode == "abs":
            w1, w2 = w1.abs(), w2.abs()
        y1 = F.conv2d(b, w1, padding=s.kernel // 2)
        y2 = F.conv2d(b, w2)
        if self.bn1 is not None:
            y1, y2 = self.bn1(y1), self.bn2(y2)
        return y1 + y2


def conv_out(size, k, s, d, p_total):
    return (size + p_total - d * (k - 1) - 1) // s + 1


def pool_out(size, k, s, p, ceil_mode=False):
    if not ceil_mode:
        return (size + 2 * p - k) // s + 1
    out = -(-(size + 2 * p - k) // s) + 1
    if (out - 1) * s >= size + p:  # PyTorch: the last window must start inside the input or left padding
        out -= 1
    return out


@dataclass
class LayerInfo:
    """What the spec expects of one conv2d/dense layer in the report."""
    name: str
    expect: str  # "binary", "float_input" (input not binarized), "float_weights", "two_pads", "bad_pad"
    alt: str | None = None  # also accepted through ONNX (where the exporter may fold the BN that made it constant)
    # also accepted in every frontend: the binarization may be constant to the analysis (see _maybe_constant)
    maybe: tuple = ()


@dataclass
class Built:
    net: torch.nn.Module
    inputs: list
    layers: list  # LayerInfo, in forward order
    exact: list  # per model output: integer-valued by construction (compare exactly)
    forms: set = field(default_factory=set)


class FuzzNet(torch.nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        self.ctx = Ctx()
        self.branches = torch.nn.ModuleList()
        self.layer_infos, self.exact_outputs, self.forms = [], [], set()
        self.const_checks = []  # (LayerInfo, module) of layers whose input is a constant function (see build)
        for bi, br in enumerate(spec.branches):
            mods = torch.nn.ModuleList()
            self._build_branch(bi, br, mods)
            self.branches.append(mods)

    def _build_branch(self, bi, br, mods):
        ctx = self.ctx
        shape, domain, nonneg = tuple(br.shape), "float", False
        const = False  # the tensor is a constant function of the input (a BN with gamma == 0 everywhere), seen
        after_nonneg = False  # only BN / elementwise ops since a ReLU / sigmoid (see _maybe_constant)
        zero_risk = False  # the tensor may have exact zeros the model makes (see Binarize.chance)
        smooth = False  # a tanh / sigmoid / silu since the last layer: its rounding may decide a threshold
        after_float_sum = False  # the tensor is a float conv / dense output, through elementwise ops, BN, pooling
        input_only = True  # only elementwise ops, BatchNorms and pooling since the model input
        for li, s in enumerate(br.layers):  # through ops the analysis follows: it is binary itself (README)
            n_infos = len(self.layer_infos)
            prefix = f"branches.{bi}.{li}"
            c = shape[0]
            if getattr(s, "act", None):
                self.forms.add(s.act)
            suffix = {"BinConv": ".conv", "BinDense": ".fc", "Residual": ".body.conv"}.get(type(s).__name__, "")
            name = prefix + (suffix if getattr(s, "act", None) == MODULE_FORM else ".body" * isinstance(s, Residual))
            if isinstance(s, BinConv):
                mod = BinConvMod(ctx, s, c, nonneg)
                self.layer_infos.append(LayerInfo(name, mod.refused_pad or "binary"))
                if nonneg and (s.act in TIE_DIFFERS or s.act == "round3") and s.fpad_fill == -1 and any(s.fpad) \
                        and not s.fpad_pre:
                    # a torch.sign (or round) form of a tensor >= 0 (after a ReLU) takes {0, 1} with the model's
                    # zeros, or is constant: the pad's -1 is then neither value (found by the long Cortex-M run)
                    self.layer_infos[-1].maybe = tuple(self.layer_infos[-1].maybe) + ("bad_pad",)
            elif isinstance(s, BinDense):
                mod = BinDenseMod(ctx, s, int(np.prod(shape)), nonneg, cin=c)
                self.layer_infos.append(LayerInfo(name, "binary"))
            elif isinstance(s, FloatConv):
                mod = FloatConvMod(ctx, s, c, nonneg)
                self.layer_infos.append(LayerInfo(name, "float_input" if not s.act else "binary"
                                                  if few_weights(c, s) else "float_weights"))
            elif isinstance(s, FloatDense):
                fin = int(np.prod(shape))
                mod = FloatDenseMod(ctx, s, fin, nonneg)
                self.layer_infos.append(LayerInfo(name, "float_input" if not s.act else "binary"
                                                  if few_weights(fin, s) else "float_weights"))
            elif isinstance(s, BN):
                mod = _random_bn(ctx, c, s.seed, len(shape) + 1)
            elif isinstance(s, Elementwise):
                mod = ElementwiseMod(ctx, s, c)
            elif isinstance(s, Pool):
                mod = PoolMod(ctx, s)
            elif isinstance(s, Residual):
                mod = ResidualMod(ctx, s, c, nonneg)
                self.layer_infos.append(LayerInfo(name, "binary"))
            elif isinstance(s, Fork):
                mod = ForkMod(ctx, s, c, nonneg)
                self.layer_infos += [LayerInfo(name, "binary"), LayerInfo(name, "binary")]
            else:
                raise TypeError(s)
            if after_nonneg and getattr(s, "act", None) in MAYBE_CONSTANT:
                for info in self.layer_infos[n_infos:]:
                    info.maybe = _maybe_constant(s, mod, info)
            site = getattr(mod, "binarize", None) or getattr(getattr(mod, "body", None), "binarize", None)
            if site is not None:
                site.cancelled = after_float_sum
            if isinstance(s, (FloatConv, FloatDense)):
                after_float_sum = True  # float weights: their sums cancel to 0 or not by how they are rounded
            elif not isinstance(s, (Elementwise, BN, Pool)):
                after_float_sum = False
            pads_first = isinstance(s, BinConv) and s.fpad_pre and any(s.fpad)
            if site is not None and input_only and not nonneg and not zero_risk and not pads_first:
                site.chance = True  # the model input's own zeros (a sign of F.pad(x) has the pad's zeros as well:
                # the compiled layer then computes {-1, 0, 1} in planes, every zero as PyTorch does)
            # a residual add of the input keeps its chance zeros: x + body(x) is 0 only where x happens to be -body
            # (the analysis' view: a sum with an arbitrary float is arbitrary), and so do hardtanh / prelu after it
            input_only = input_only and (isinstance(s, (Elementwise, BN, Pool)) or (
                isinstance(s, Residual) and s.post in (None, "hardtanh", "prelu")))
            if zero_risk and getattr(s, "act", None) in TIE_DIFFERS:
                # the model may make exact zeros here (dot = 0 of an integer-valued layer, a ReLU's or a constant
                # channel's): sign(0) = 0 is a third value, and the analysis keeps the layer float when it cannot rule
                # them out; whichever it decides, the outputs are compared exactly with PyTorch's
                for info in self.layer_infos[n_infos:]:
                    if info.expect == "binary":
                        info.maybe = tuple(info.maybe) + ("float_input",)
            if smooth and getattr(s, "act", None):
                # the analysis refuses a threshold that lands within libm's rounding of the smooth function at one
                # of the values its input can take (not only those of this example's input): "depends on how Tanh
                # is rounded" (found by the long fuzz run)
                for info in self.layer_infos[n_infos:]:
                    info.maybe = tuple(info.maybe) + ("rounding",)
            if isinstance(s, Elementwise):
                smooth = smooth or s.op in SMOOTH_OPS
            elif not isinstance(s, (BN, Pool)):
                smooth = isinstance(s, Residual) and s.post in SMOOTH_OPS
            if isinstance(s, (BinConv, FloatConv)) and s.act and _all_zero_gamma(mod.bn):
                info = self.layer_infos[-1]  # torch.onnx.export folds the BN into the conv: all-zero weights,
                if info.expect == "float_weights":  # binary with alpha = 0 (test_regressions.py)
                    info.alt = "binary"
            if const:
                checks = [getattr(mod, "binarize", None) or getattr(getattr(mod, "body", None), "binarize", None)]
                if isinstance(s, (FloatConv, FloatDense)) and not s.act:
                    checks = [mod]
                self.const_checks += [(info, checks[0]) for info in self.layer_infos[n_infos:]]
            const = _still_constant(s, mod, const)
            if isinstance(s, Elementwise) and s.op in ("relu", "sigmoid"):
                after_nonneg = True
            elif not isinstance(s, (Elementwise, BN)):
                after_nonneg = isinstance(s, Residual) and s.post in ("relu", "sigmoid")
            if isinstance(s, Elementwise):
                nonneg = s.op in ("relu", "sigmoid") or (nonneg and s.op in ("hardtanh", "leaky_relu", "tanh"))
            elif isinstance(s, Residual):
                nonneg = s.post in ("relu", "sigmoid")
            elif not isinstance(s, Pool):
                nonneg = False
            shape, domain = _next_state(s, shape, domain)
            if isinstance(s, Residual):  # x + body: a zero channel of the body keeps x's zeros, makes none of its own
                zero_risk = domain == "int" or nonneg or (zero_risk and _zero_channel(mod.body, False))
            else:
                zero_risk = domain == "int" or nonneg or _zero_channel(mod, zero_risk and isinstance(s, (Pool, Elementwise)))
            mod.tap = getattr(s, "tap", False)
            mod.exact = domain == "int"  # integer-valued output: compared exactly
            mods.append(mod)
        mods.final_exact = domain == "int"

    def forward(self, *xs):
        outs = []
        for x, mods in zip(xs, self.branches):
            for mod in mods:
                x = mod(x)
                if mod.tap and mod is not mods[-1]:
                    outs.append(x)
            outs.append(x)
        return tuple(outs) if len(outs) > 1 else outs[0]

    def output_exact(self):
        flags = []
        for mods in self.branches:
            for mod in mods:
                if mod.tap and mod is not mods[-1]:
                    flags.append(mod.exact)
            flags.append(mods.final_exact)
        return flags


# {lo, hi} forms whose binarization of a ReLU / sigmoid output (through BN and elementwise ops, which the analysis
# follows back to the ReLU's input) may be constant in every element: the analysis then sees one value v and takes
# the values +-v (README: constant activations, binary_values.py), or refuses "the constant 0". The fuzzer does not
# replicate the analysis to decide it, so it accepts both outcomes there; the outputs agree either way (no tie rule).
MAYBE_CONSTANT = {"ge01", "gt01_t", "where_m1_3"}


def _maybe_constant(s, mod, info):
    """Categories also accepted for ``info`` when the binarization of layer ``s`` may be constant (MAYBE_CONSTANT):
    {0, 1} constant 0 -> "input not binarized"; {-1, 3} constant 3 or -1 -> +-3 / +-1, where an F.pad with -1 / 3
    pads with neither value."""
    if s.act in ("ge01", "gt01_t"):  # the ONNX multiset names a refused input first, before weights not binary
        return ("float_input",) if info.expect in ("binary", "two_pads", "float_weights") else ()
    if info.expect not in ("binary", "two_pads"):
        return ()
    if isinstance(s, BinConv) and s.fpad_fill in (1, -1) and not s.fpad_pre and any(s.fpad):
        return ("bad_pad",)
    return ()


def _zero_channel(mod, kept: bool) -> bool:
    """Does ``mod`` end in a BatchNorm with a channel of gamma == beta == 0 (a constant 0), or keep such zeros?"""
    bns = [m for m in mod.modules() if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)]
    if bns:
        return any(bool(((bn.weight == 0) & (bn.bias == 0)).any()) for bn in bns)
    return kept


def _all_zero_gamma(bn):
    return bn is not None and bool((bn.bn.weight == 0).all())


def _still_constant(s, mod, const):
    """Is the output of layer ``s`` (module ``mod``) a constant function of the model input, through ops the
    binarization analysis follows (elementwise chains, max-pool, flatten)?"""
    if isinstance(s, BN):
        return const or _all_zero_gamma(mod)
    if isinstance(s, (BinConv, BinDense, FloatConv, FloatDense)):
        return _all_zero_gamma(mod.bn)
    if isinstance(s, Elementwise):
        return const and s.op in ("relu", "hardtanh", "leaky_relu", "prelu", "scale_shift")
    if isinstance(s, Pool):
        return const and s.op == "max"
    return False  # Residual, Fork: a sum of two tensors


def _resolve_constant_inputs(net, inputs):
    """Expectations of layers whose input is a constant function (a BatchNorm with gamma == 0 in every channel):
    the analysis finds it takes one value (binary, one bit value used) or two (binary), unless that value is 0
    ("it is the constant 0": a {0, 1} activation that is always 0 leaves the layer float). A float-weight layer
    on a constant binary input binarizes when it has one weight per output channel, else reports its weights."""
    ctx = net.ctx
    with torch.no_grad():
        try:
            ctx.mode, ctx.seen = "ref", []
            net.double()(*[x.double() for x in inputs])
        finally:
            net.float()
            ctx.mode, ctx.seen = "torch", []
    for info, mod in net.const_checks:
        default = info.expect
        if isinstance(mod, Binarize):  # what the analysis sees: torch.sign by the tie rule
            if default != "binary":  # refused for its padding or weights: the constant input may be named instead
                info.maybe = tuple(info.maybe) + ("float_input",)
            if mod.form != MODULE_FORM and bool((mod.ref(mod._ref_in, ge_sign) == 0).all()):
                if mod.form in LEVEL_STEPS:  # 0 is a level of a few-level form: its planes hold it exactly, so
                    info.maybe = tuple(info.maybe) + ("float_input",)  # the layer may compile low-bit, or not
                else:  # (a layer refused for its padding or weights as well may say that instead: both hold)
                    info.expect, mod.packed = "float_input", False
                    if default != "binary":
                        info.maybe = tuple(info.maybe) + (default,)
        else:
            values = np.unique(mod._ref_in[0].numpy())
            if (values.size == 1 and values[0] != 0) or values.size == 2:
                info.expect = "binary" if mod.few_weights else "float_weights"
        if info.expect != default:
            info.alt = info.alt or default


def make_inputs(spec: NetSpec):
    xs = []
    for br in spec.branches:
        rng = _rng(br.input_seed)
        x = rng.standard_normal((br.batch,) + tuple(br.shape)) * rng.choice([0.5, 1.0, 3.0])
        if br.input_zeros:
            x[rng.random(x.shape) < br.input_zeros] = 0.0
        xs.append(_tensor(x))
    return xs


def build(spec: NetSpec) -> Built:
    net = FuzzNet(spec).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    inputs = make_inputs(spec)
    if net.const_checks:
        _resolve_constant_inputs(net, inputs)
    return Built(net, inputs, net.layer_infos, net.output_exact(), net.forms)


def coverage(spec: NetSpec, built: Built) -> list:
    """Features of the recognition an example exercises (hypothesis events: --hypothesis-show-statistics)."""
    tags = set()
    for s in (layer for br in spec.branches for layer in br.layers):
        if isinstance(s, BinConv) and s.groups > 1:
            tags.add("grouped binary conv")
        if isinstance(s, BinConv) and s.fpad_fill in (1, -1) and not s.fpad_pre and any(s.fpad):
            tags.add("F.pad with one of the two values")
        if isinstance(s, BinConv) and s.fpad_fill == 3 and not s.fpad_pre and any(s.fpad):
            tags.add("replicate pad of the binarized tensor")
    if any(info.expect == "two_pads" for info in built.layers):
        tags.add("two padding values (refused)")
    if any(info.expect == "bad_pad" for info in built.layers):
        tags.add("padded with neither value (refused)")
    if any(info.alt is not None for info in built.layers):
        tags.add("constant activation")
    for form, tag in (({"ge01", "gt01_t", "where_m1_3"}, "values {lo, hi}"), (set(SCALE_FORMS), "values +-s"),
                      (THRESHOLD_FORMS, "per-channel threshold"), ({"neg_sign", "where_lt"}, "decreasing"),
                      ({"where_gt", "gt01_t"}, "strict x > t")):
        if built.forms & form:
            tags.add(tag)
    return sorted(tags)


# --------------------------------------------------------------------------------------------------------------------
# open bugs: examples that hit one are rejected (test_differential.check_model) so that long runs look for new ones;
# each has an xfail(strict=True) test in test_regressions.py. Remove the entry with the fix. (None open: the last,
# a float pad fused after a pool / conv, was fixed in schedules/float_x86._inline_epilogue.)

OPEN_BUGS: dict = {}


def open_bug(spec: NetSpec, built: Built) -> str | None:
    return next((name for name, hits in OPEN_BUGS.items() if hits(spec, built)), None)


# --------------------------------------------------------------------------------------------------------------------
# reference evaluation

@dataclass
class Reference:
    torch_out: list  # float32, literal forms (PyTorch)
    ref_out: list  # float64, compiled semantics (tie rule, exact +-1)
    near_ties: int  # binarized values within float rounding of 0 (example is ambiguous)
    tie_zeros: int  # exact zeros at a torch.sign-based form (PyTorch 0 vs compiled +1: documented)
    zeros: int  # exact zeros at any binarization


def _as_list(y):
    return [t.detach().numpy() for t in (y if isinstance(y, tuple) else (y,))]


def evaluate(built: Built) -> Reference:
    net, ctx = built.net, built.net.ctx
    with torch.no_grad():
        ctx.mode = "torch"
        torch_out = _as_list(net(*built.inputs))
        ref_net = net.double()
        try:
            ctx.mode, ctx.seen = "ref", []
            ref_out = _as_list(ref_net(*[x.double() for x in built.inputs]))
            ctx.mode, ctx.bounds, ctx.relu_near = "abs", [], 0
            ref_net(*[x.double().abs() for x in built.inputs])
        finally:
            net.float()
            ctx.mode = "torch"
    assert len(ctx.seen) == len(ctx.bounds)
    near = tie = zeros = 0
    for (form, x, nonneg, tied, cancelled), bound in zip(ctx.seen, ctx.bounds):
        x, bound = x.numpy(), bound.numpy()
        is_zero = x == 0
        zeros += int(is_zero.sum())
        packed = tied or form not in TIE_DIFFERS  # (the near-tie rule below, as before)
        if tied:
            tie += int(is_zero.sum())
        # an exact 0 from a ReLU (tiny positive in float32) decides the result of a strict / threshold form, and of a
        # torch.sign form computed in float (sign(0) = 0 vs sign(tiny) = 1)
        if nonneg and (form in NONNEG_UNSAFE or (not packed and form in TIE_DIFFERS)):
            nonneg = False
            near += ctx.relu_near  # an exact 0 from a ReLU may be a tiny positive value in float32
        if cancelled:  # a float sum that cancelled to exactly 0 here may not in the compiled model's order
            near += int((is_zero & (bound > 0)).sum())
        if not nonneg:  # a value >= 0 by construction is on the same side of x >= 0 / x < 0 however it rounds
            # relative to the bound, or below float32's normal range (underflow rounds to 0 there)
            near += int(((np.abs(x) < np.maximum(TIE_RTOL * bound, 1e-30)) & ~is_zero).sum())
    return Reference(torch_out, ref_out, near, tie, zeros)


# --------------------------------------------------------------------------------------------------------------------
# hypothesis strategies

def channels(draw, small_max=12):
    """Mostly small channel counts, sometimes word-boundary and large ones (up to 300)."""
    return draw(st.one_of(st.integers(1, small_max), st.integers(1, small_max), st.integers(1, small_max),
                          st.sampled_from([31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300])))


def spatial(draw, lo=1, hi=13):
    if draw(st.integers(0, 9)) == 0:
        hi = 41  # now and then a larger map: remainder loops of the register-blocked schedules
    return draw(st.integers(lo, hi).filter(lambda v: v % 8 != 0))


# the forms added with the {lo, hi} / threshold / padding work, by family; act_form() draws a family first, so that
# each family gets a fair share of the examples whatever the number of classic +-1 forms
NEW_FORM_FAMILIES = (
    ("where_ones", "where_gt"),  # other spellings of the test at 0: ones_like fills, strict x > 0
    ("neg_sign", "where_lt"),  # decreasing in x
    ("ge01", "where_m1_3"),  # two values other than +-1: {0, 1}, {-1, 3}
    ("brevitas", "brevitas_rand"),  # +-s: Brevitas' clamp, compare, scale
    ("sign_sub_t", "where_ge_t", "gt01_t"),  # per-channel thresholds
    ("round3", "dorefa4", "dorefa8"),  # few levels: bit planes (W1A2, W1A3)
)
NEW_FORMS = {f for family in NEW_FORM_FAMILIES for f in family}
CLASSIC_FORMS = sorted(set(ACT_FORMS) - NEW_FORMS)
ACT_CHOICES = sorted(ACT_FORMS) + [MODULE_FORM]  # every form act_form() can draw
assert NEW_FORMS <= set(ACT_FORMS) and PARAM_FORMS <= NEW_FORMS


@st.composite
def act_form(draw):
    """A binarization form: the tvm_bnn.nn layers 1/8, a classic +-1 form 7/16, a new form 7/16 (family, then form)."""
    u = draw(st.integers(0, 15))
    if u < 2:
        return MODULE_FORM
    if u < 9:
        return draw(st.sampled_from(CLASSIC_FORMS))
    return draw(st.sampled_from(draw(st.sampled_from(NEW_FORM_FAMILIES))))


@st.composite
def conv_geometry(draw, h, w, fpad=(0, 0, 0, 0), max_kernel=7, max_pad=3):
    """(kernel, stride, dilation, padding) giving an output of at least 1x1 on an h x w input (+ F.pad)."""
    square = draw(st.booleans())
    d = draw(st.integers(1, 2))
    dil = (d, d) if square or draw(st.booleans()) else (d, draw(st.integers(1, 2)))
    kernel, padding = [], []
    for i, size in enumerate((h + fpad[2] + fpad[3], w + fpad[0] + fpad[1])):
        fits = lambda k, p: size + 2 * p - dil[i] * (k - 1) - 1 >= 0  # noqa: E731
        if i == 1 and square and fits(kernel[0], padding[0]):
            kernel.append(kernel[0])
            padding.append(padding[0])
            continue
        p = draw(st.integers(0, max_pad))
        k = draw(st.integers(1, max(1, min(max_kernel, (size + 2 * p - 1) // dil[i] + 1))))
        if p > k - 1 and fits(k, k - 1) and draw(st.booleans()):  # mostly padding < kernel, as real models have
            p = k - 1
        kernel.append(k)
        padding.append(p)
    stride = draw(st.integers(1, 3))
    stride = (stride, stride) if draw(st.booleans()) else (stride, draw(st.integers(1, 3)))
    return tuple(kernel), stride, dil, tuple(padding)


def _weight_form(draw, module):
    if module:
        return draw(st.sampled_from([None, "xnor"]))
    return draw(st.sampled_from(WEIGHT_FORMS + ["sign"] * 2))


@st.composite
def layer(draw, shape, domain, allow_refused=True):
    """One layer spec for a state of ``shape`` ((C, H, W) or (F,)) and ``domain``: "float" (generic float),
    "int" (integers from a +-1 binary layer), "scaled" (dot * alpha, alpha != 1: never binarize directly, its 0 is
    a float-rounding tie)."""
    is_map = len(shape) == 3
    seed = draw(st.integers(0, 2 ** 16))
    kinds = ["bin_dense", "float_dense", "bn", "elementwise"]
    if is_map:
        kinds += ["bin_conv"] * 6 + ["float_conv", "pool", "residual", "residual", "pool", "fork"]
    if domain == "scaled":
        return BN(seed)  # give the next binarization a generic zero crossing
    kind = draw(st.sampled_from(kinds))
    act = draw(act_form())
    module = act == MODULE_FORM
    tap = draw(st.integers(0, 9)) == 0
    if kind == "bin_conv":
        c, h, w = shape
        fpad, fpad_pre, fill, pool, max_pad = (0, 0, 0, 0), False, 0, None, 3
        if draw(st.integers(0, 1)) == 0:
            fpad = tuple(draw(st.lists(st.integers(0, 2), min_size=4, max_size=4)))
            fpad_pre = module or draw(st.integers(0, 3)) == 0
            if not fpad_pre and any(fpad):
                # zeros, one of the two values (a constant bit), now and then neither (refused)
                fill = draw(st.sampled_from([0, 0, 1, -1, 1, -1, 2, 3]))
                if fill in (1, -1) and draw(st.integers(0, 2)):
                    max_pad = 0  # mostly a valid combination: no zero padding of the conv's own
        elif not module and draw(st.integers(0, 5)) == 0 and min(h, w) >= 2:
            k = draw(st.integers(2, min(3, h, w)))
            pool = (k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)))
            h, w = pool_out(h, *pool), pool_out(w, *pool)
        kernel, stride, dil, padding = draw(conv_geometry(h, w, fpad, max_pad=max_pad))
        cout = channels(draw)
        groups = 1
        wform = _weight_form(draw, module)
        if c > 1 and draw(st.integers(0, 4)) == 0:  # a grouped conv: binarized, one kernel per group
            # a small divisor of cin, or depthwise (groups = cin, one input channel per group)
            options = sorted({g for g in range(2, 5) if c % g == 0} | ({c} if c <= 64 else set()))
            if options:
                g = draw(st.sampled_from(options))
                groups, cout = g, -(-cout // g) * g
        if not module and draw(st.integers(0, 9)) == 0:
            wform = draw(st.sampled_from(LOW_BIT_WEIGHT_FORMS))  # 3-4 levels: weight planes
        return BinConv(cout, kernel, stride, dil, padding, fpad, fpad_pre, fill, act, wform, pool, groups,
                       bias=draw(st.integers(0, 3)) == 0, bn=draw(st.integers(0, 9)) < 6, tap=tap, seed=seed)
    if kind == "bin_dense":
        wform = _weight_form(draw, module)
        if not module and draw(st.integers(0, 9)) == 0:
            wform = draw(st.sampled_from(LOW_BIT_WEIGHT_FORMS))
        return BinDense(channels(draw, 20), act, wform, flatten_first=not is_map or draw(st.booleans()),
                        bias=draw(st.integers(0, 3)) == 0, bn=draw(st.integers(0, 9)) < 6, tap=tap, seed=seed,
                        matmul=not module and draw(st.integers(0, 3)) == 0)
    if kind == "float_conv":
        c, h, w = shape
        kernel, stride, dil, padding = draw(conv_geometry(h, w, max_kernel=5))
        binary_in = not module and draw(st.integers(0, 3)) == 0
        wform = "float" if binary_in or draw(st.integers(0, 2)) else draw(st.sampled_from(WEIGHT_FORMS))
        return FloatConv(channels(draw), kernel, stride, dil, padding, act if binary_in else None, wform,
                         bias=draw(st.booleans()), bn=draw(st.booleans()), tap=tap, seed=seed)
    if kind == "float_dense":
        binary_in = not module and draw(st.integers(0, 3)) == 0
        return FloatDense(channels(draw, 20), act if binary_in else None, bias=draw(st.booleans()),
                          bn=draw(st.booleans()), tap=tap, seed=seed)
    if kind == "bn":
        return BN(seed)
    if kind == "elementwise":
        return Elementwise(draw(st.sampled_from(["hardtanh", "leaky_relu", "relu", "prelu", "tanh", "relu",
                                                 "sigmoid", "silu", "scale_shift"])), seed)
    if kind == "pool":
        c, h, w = shape
        k = draw(st.integers(1, max(1, min(3, h, w))))
        s = draw(st.integers(1, 3))
        return Pool(draw(st.sampled_from(["avg", "max"])), k, s, draw(st.integers(0, k // 2)),
                    ceil_mode=draw(st.integers(0, 3)) == 0, count_include_pad=draw(st.booleans()))
    if kind == "fork":
        wform = _weight_form(draw, False)
        return Fork(channels(draw), draw(st.sampled_from([3, 1, 5])), act if not module else "where_ge", wform,
                    bn=wform not in PM1_WEIGHT_FORMS or draw(st.booleans()), seed=seed)
    kernel = draw(st.sampled_from([1, 3, 3, 5]))
    return Residual(kernel, draw(st.integers(1, 2)), act, _weight_form(draw, module),
                    draw(st.sampled_from([None, None, "hardtanh", "prelu", "relu"])), tap=tap, seed=seed)


def _next_state(s, shape, domain):
    """The (shape, domain) after layer ``s``, by building nothing: the same arithmetic FuzzNet does."""
    if isinstance(s, BinConv):
        _, h, w = shape
        t, b, l, r = s.fpad[2], s.fpad[3], s.fpad[0], s.fpad[1]
        if s.fpad_pre:
            h, w, t, b, l, r = h + t + b, w + l + r, 0, 0, 0, 0
        if s.pool is not None:
            h, w = (pool_out(v, *s.pool) for v in (h, w))
        h = conv_out(h + t + b, s.kernel[0], s.stride[0], s.dilation[0], 2 * s.padding[0])
        w = conv_out(w + l + r, s.kernel[1], s.stride[1], s.dilation[1], 2 * s.padding[1])
        return (s.cout, h, w), _binary_domain(s)
    if isinstance(s, BinDense):
        return (s.out,), _binary_domain(s)
    if isinstance(s, FloatConv):
        _, h, w = shape
        return (s.cout, conv_out(h, s.kernel[0], s.stride[0], s.dilation[0], 2 * s.padding[0]),
                conv_out(w, s.kernel[1], s.stride[1], s.dilation[1], 2 * s.padding[1])), "float"
    if isinstance(s, FloatDense):
        return (s.out,), "float"
    if isinstance(s, Pool):
        c, h, w = shape
        return (c, pool_out(h, s.kernel, s.stride, s.padding, s.ceil_mode),
                pool_out(w, s.kernel, s.stride, s.padding, s.ceil_mode)), domain if s.op == "max" else "float"
    if isinstance(s, Elementwise):
        return shape, domain if s.op == "relu" else "float"
    if isinstance(s, Fork):
        return (s.cout,) + tuple(shape[1:]), "float" if s.bn else ACT_DOMAIN.get(s.act, "int")
    return shape, "float"  # BN, Residual


def _binary_domain(s):
    """"int": exactly representable and computed exactly both ways (integers, halves with {0, 1}, multiples of 0.75
    with Brevitas' s = 0.75); "scaled": a float multiple of a random scale (rounded: compared to float rounding,
    and its 0 is not an exact tie); "float" after a bias or BN."""
    if s.bn or s.bias:
        return "float"
    if s.wform in PM1_WEIGHT_FORMS or s.wform is None or s.wform in LOW_BIT_WEIGHT_FORMS:
        return ACT_DOMAIN.get(s.act, "int")
    return "scaled"


@st.composite
def branches(draw, max_layers=4, max_batch=4):
    batch = draw(st.integers(1, max_batch))
    if draw(st.integers(0, 5)) == 0:
        shape = (channels(draw, 40),)
    else:
        shape = (channels(draw), spatial(draw), spatial(draw))
    n = draw(st.integers(1, max_layers))
    layers, state, domain = [], shape, "float"
    for _ in range(n):
        s = draw(layer(state, domain))
        layers.append(s)
        state, domain = _next_state(s, state, domain)
    if domain == "scaled" and draw(st.booleans()):
        layers.append(BN(draw(st.integers(0, 2 ** 16))))
    return Branch(batch, shape, layers, draw(st.integers(0, 2 ** 16)),
                  draw(st.sampled_from([0.0, 0.0, 0.0, 0.2])))


@st.composite
def nets(draw, max_branches=2, max_layers=4, max_batch=4):
    return NetSpec(draw(st.lists(branches(max_layers, max_batch), min_size=1, max_size=max_branches)))
