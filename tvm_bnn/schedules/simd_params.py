"""The parameters of a binary kernel built without them: a benchmark's or a test's bare ``te.create_prim_func`` of the
ops/ TE has no ``tvm_bnn.params`` attribute, and the byte-lane form (``schedules/simd_bytes.py``) needs the conv
geometry or the dense K. They are read off the generic TE's blocks, then verified by rebuilding the generic TE from
them and comparing structurally, so a wrong reading is never used.
"""
from __future__ import annotations

import json

import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

from ..ops import WORD_BITS

def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - the block does not exist
        return None


def signature(func) -> list:
    return [(str(p.name), tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params]


def _bare(func) -> tirx.PrimFunc:
    return tirx.PrimFunc(func.params, func.body)


def _generic_func(op: str, params: dict, sig) -> tirx.PrimFunc:
    from ..passes.kernels import TE_BUILDERS

    phs = [te.placeholder(shape, dtype, name=name) for name, shape, dtype in sig[:-1]]
    return te.create_prim_func(phs + [TE_BUILDERS[op](params)(*phs)])


def _block_body(func, name):
    sch = s_tir.Schedule(func)
    return sch.get(sch.get_sblock(name))


_LOAD = tvm.ir.expr.TensorLoad  # what tirx.BufferLoad builds in this TVM
_CHILDREN = ("value", "indices", "args", "a", "b", "condition", "true_value", "false_value", "source")


def _visit(node, fvisit):
    """Post-order walk over the expressions of a block body (this TVM exposes no TIR post_order_visit to Python)."""
    for attr in _CHILDREN:
        child = getattr(node, attr, None)
        if child is None or isinstance(child, (int, float, str)):
            continue
        if isinstance(child, (list, tuple, tvm.ir.Array)) or type(child).__name__ == "Array":
            for c in child:
                if isinstance(c, (tvm.ir.Expr, tirx.Stmt)):
                    _visit(c, fvisit)
        elif isinstance(child, (tvm.ir.Expr, tirx.Stmt)):
            _visit(child, fvisit)
    fvisit(node)


def _ints(expr) -> list:
    found = []
    _visit(expr, lambda e: found.append(int(e.value)) if isinstance(e, tirx.IntImm) else None)
    return found


def _eval(expr, values: dict) -> int:
    from tvm.sym.analyzer import Analyzer

    ana = Analyzer()
    for var, value in values.items():
        ana.bind(var, value)
    out = ana.simplify(expr)
    if not isinstance(out, tirx.IntImm):
        raise ValueError(f"{expr} is not constant under {values}: {out}")
    return int(out)


def recover_params(func, op: str) -> dict | None:
    """The ``tvm_bnn.params`` of a kernel built from ops/ TE without them (a benchmark's or a test's bare
    ``te.create_prim_func``): read off the generic TE's blocks, then verified by rebuilding the generic TE from
    them and comparing structurally. None when that fails."""
    sig = signature(func)
    try:
        if op.startswith("binary_dense"):
            kw_ = sig[0][1][1]
            ints = [v for v in _ints(_block_body(func, "dot").body) if (kw_ - 1) * WORD_BITS < v <= kw_ * WORD_BITS]
            candidates = [{"k": v} for v in dict.fromkeys(ints)]
        else:
            candidates = [_conv_params(func, sig, op)]
    except Exception:  # noqa: BLE001 - not the generic TE we know
        return None
    for params in candidates:
        try:
            if tvm_ffi.structural_equal(_bare(_generic_func(op, params, sig)), _bare(func)):
                return params
        except Exception:  # noqa: BLE001
            continue
    return None


def _conv_params(func, sig, op: str) -> dict:
    """Geometry of a generic conv TE (ops/binary_conv2d.py, output channels vectorised): strides and dilation from
    the input load of ``popcount``, the top/left padding and pad value from ``pad``, C from ``dot``'s constant."""
    (_, (_, h_, w_, cw_), _), (_, (_, kh_, kw_, _), _) = sig[0], sig[1]
    out_shape = sig[-1][1]
    oh_, ow_ = (out_shape[2], out_shape[3]) if op == "binary_conv2d" else (out_shape[1], out_shape[2])
    pop = _block_body(func, "popcount")
    loads = []
    _visit(pop.body, lambda e: loads.append(e) if isinstance(
        e, _LOAD) and str(e.source.name) not in ("weights_t", "popcount") else None)
    xload = loads[0]
    iv = {v.var.name: v.var for v in pop.iter_vars}
    p, rkh, rkw = iv["v_p"], iv["v_rkh"], iv["v_rkw"]

    def at(expr, pv=0, khv=0, kwv=0):
        return _eval(expr, {p: tirx.const(pv, "int32"), rkh: tirx.const(khv, "int32"),
                            rkw: tirx.const(kwv, "int32")})

    ih, iw = xload.indices[1], xload.indices[2]
    sh = at(ih, pv=ow_) - at(ih) if oh_ > 1 else 1
    dh = at(ih, khv=1) - at(ih) if kh_ > 1 else 1
    sw = at(iw, pv=1) - at(iw) if ow_ > 1 else 1
    dw = at(iw, kwv=1) - at(iw) if kw_ > 1 else 1
    pt = pl = 0
    pad_value = 0
    pad = _try(_block_body, func, "pad")
    if pad is not None:
        zero = {v.var: tirx.const(0, "int32") for v in pad.iter_vars}
        found = []
        _visit(pad.body, lambda e: found.append(e) if isinstance(e, tvm.ir.expr.Call) and str(
            e.op.name).endswith("if_then_else") else None)
        xin = found[0].args[1]
        pt, pl = -_eval(xin.indices[1], zero), -_eval(xin.indices[2], zero)
        fill = _eval(found[0].args[2], zero)
        has_adjust = _try(_block_body, func, "pad_adjust") is not None
        pad_value = 1 if fill != 0 else (0 if has_adjust else -1)
    base = [v for v in _ints(_block_body(func, "dot").body) if v > 0 and v % (kh_ * kw_) == 0
            and (cw_ - 1) * WORD_BITS < v // (kh_ * kw_) <= cw_ * WORD_BITS]
    c = base[0] // (kh_ * kw_)
    pb = max(0, (oh_ - 1) * sh + dh * (kh_ - 1) + 1 - h_ - pt)
    pr = max(0, (ow_ - 1) * sw + dw * (kw_ - 1) + 1 - w_ - pl)
    return dict(in_channels=c, kernel=[kh_, kw_], strides=[sh, sw], padding=[pt, pl, pb, pr], dilation=[dh, dw],
                pad_value=pad_value)


def kernel_params(func, op: str) -> dict | None:
    attrs = func.attrs
    if attrs is not None and "tvm_bnn.params" in attrs:
        return json.loads(str(attrs["tvm_bnn.params"]))
    return recover_params(func, op)
