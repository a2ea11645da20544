"""Our bit-packed operators as Relax ``call_tir`` calls, and how to read them back.

Every kernel we emit is a TE-generated PrimFunc carrying two attributes: ``tvm_bnn.op`` (the operator) and
``tvm_bnn.params`` (its static parameters, JSON). Later passes read them back with :func:`kernel_of` to fuse more
work into a kernel and re-emit it; the x86/C schedules find their kernels by the same attributes. ``op_pattern`` is
opaque (8) so that FuseOps leaves each kernel whole for its own schedule.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import tvm
from tvm import relax, te

from ..ops import binary_conv2d, binary_dense, binary_maxpool, bitpack, ternary_conv2d

OPAQUE = 8


def _pool_geo(p):
    return binary_maxpool.PoolGeometry(tuple(p["pool"]), tuple(p["strides"]), tuple(p["padding"]),
                                       tuple(p["dilation"]), bool(p["ceil_mode"]))


_conv_geo = binary_conv2d.Conv2dGeometry.from_params

def _conv(op, compute):
    """params -> TE function of a binary conv call: ``(xp, wp, a, b)``, or with its weights laid out at compile time
    (params ``prepared``, schedules/weight_layout.py) ``(xp, weights_t, a, b)`` / ``(xp, weights_t, pad_adjust, a,
    b)`` in the generic layout (a byte-lane ``flavour``'s layout comes with its own TE: ``call_kernel(te_func=)``);
    a float-output conv with params ``residual`` takes the tensor it adds last (passes/fuse_residual.py)."""
    def builder(p):
        geo = _conv_geo(p)
        if not p.get("prepared"):
            return lambda xp, wp, a, b, *acc: compute(xp, wp, a, b, geo, None, *acc)
        if p.get("flavour"):
            raise ValueError(f"{op} in the {p['flavour']} layout: its TE is the byte-lane kernel's (te_func)")

        def shape_of(wt):  # the packed filters' shape [O, KH, KW, CW]: the kernel reads only weights_t
            kh, kw, cw, _ = (int(d) for d in wt.shape)
            return te.placeholder((int(p["out_channels"]), kh, kw, cw), "uint64", name="filters")

        if p["prepared"] == "weights_t":
            return lambda xp, wt, a, b, *acc: compute(xp, shape_of(wt), a, b, geo, (wt, None), *acc)
        return lambda xp, wt, adj, a, b, *acc: compute(xp, shape_of(wt), a, b, geo, (wt, adj), *acc)

    return builder


# op name -> (params -> TE function over the call's tensor arguments)
TE_BUILDERS = {
    "bitpack_nchw": lambda p: bitpack.compute_nchw,
    "bitpack_rows": lambda p: bitpack.compute_rows,
    "bitpack_planes": lambda p: (lambda x, t: bitpack.compute_planes(x, None, t)) if p.get("unit_scale") else
    bitpack.compute_planes,
    "binary_conv2d": _conv("binary_conv2d", binary_conv2d.compute),
    "binary_conv2d_bits": _conv("binary_conv2d_bits", binary_conv2d.compute_bits),
    "ternary_conv2d": lambda p: lambda xp, w, a, b, corr, *acc: ternary_conv2d.compute(
        xp, w, a, b, corr, _conv_geo(p), p.get("layout", "OHWI"), p.get("shifts"), *acc),
    "binary_dense": lambda p: lambda xp, wp, s, b: binary_dense.compute(xp, wp, s, b, p["k"]),
    "binary_dense_bits": lambda p: lambda xp, wp, d, t: binary_dense.compute_bits(xp, wp, d, t, p["k"]),
    "binary_maxpool": lambda p: lambda xp: binary_maxpool.compute(xp, _pool_geo(p)),
}


@dataclass
class KernelCall:
    op: str
    params: dict
    args: list  # Relax arguments of the call_tir


def call_kernel(bb: relax.BlockBuilder, op: str, args, te_func=None, **params) -> relax.Call:
    """A call_tir of operator ``op`` on ``args`` (not yet emitted; the caller binds it). ``te_func``: the TE of the
    kernel when it is not ``TE_BUILDERS[op](params)`` (a target's own form, e.g. schedules/weight_layout.py's)."""
    attrs = {"tvm_bnn.op": op, "tvm_bnn.params": json.dumps(params, sort_keys=True), "op_pattern": OPAQUE}
    return bb.call_te(te_func or TE_BUILDERS[op](params), *args, primfunc_name_hint=f"tvm_bnn_{op}",
                      primfunc_attrs=attrs)


def kernel_of(mod: tvm.IRModule, expr) -> KernelCall | None:
    """The KernelCall behind ``expr`` if it is a call_tir of one of our kernels."""
    if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.call_tir"):
        return None
    gvar = expr.args[0]
    func = mod[gvar] if gvar in mod.get_global_vars() else None
    if func is None or func.attrs is None or "tvm_bnn.op" not in func.attrs:
        return None
    return KernelCall(str(func.attrs["tvm_bnn.op"]), json.loads(str(func.attrs["tvm_bnn.params"])),
                      list(expr.args[1].fields))


def is_kernel(func) -> bool:
    return isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and "tvm_bnn.op" in func.attrs
