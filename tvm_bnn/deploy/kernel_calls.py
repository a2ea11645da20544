"""The fused Relax ``main`` of a model as the C bundle runs it: a straight line of kernel calls (``Step``) over
tensors, each backed by a ``Storage``: a model input, a model output, a constant, or a block of the arena.

A pure view (a legalized ``reshape``, ``squeeze``, ``expand_dims`` or ``flatten`` of a contiguous tensor) is no call:
it shares its input's storage. Each kernel gets a C name (``tvm_bnn_<name>``) and, with ``lean``, the M-profile
schedule of ``schedules.cortexm`` (binary kernels) or the memory-lean one of ``schedules.lean`` (the rest). A
scheduled kernel may read one of its constants laid out at compile time (``schedules.cortexm.CONST_LAYOUT``: the
float conv's weights in blocks): the call then passes that layout, a constant of its own, and a constant no call
reads as it is any more is not written to flash.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from ..errors import BundleError
from ..targets.c_codegen import _CTYPES

_VIEW_FUNC = re.compile(r"(reshape|squeeze|expand_dims|flatten)\d*")


@dataclass(eq=False)
class Storage:
    kind: str  # "arena", "input", "output", "const"
    nbytes: int
    name: str = ""  # const array name
    offset: int = -1
    first: int = -1  # step that writes it
    last: int = -1  # last step that reads it


@dataclass(eq=False)
class Tensor:
    name: str
    dtype: str
    shape: tuple
    storage: Storage

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Step:
    kernel: str  # C function name
    args: list  # Tensor per PrimFunc parameter (inputs then output)
    out: Tensor
    scratch: list = field(default_factory=list)  # Storage per scratch parameter


@dataclass
class KernelCalls:
    in_tensors: list  # Tensor per model input, in order
    out_tensors: list  # Tensor per model output, in order
    consts: list  # (relax Constant, Tensor) per constant a call takes
    steps: list  # Step per kernel call, in order
    funcs: dict  # C name -> PrimFunc to generate (lean-scheduled when asked)
    raw_funcs: dict  # C name -> the PrimFunc as fused, before the lean schedule


def input_shapes(optimized_mod: tvm.IRModule) -> list:
    """The static shape of each input of the module's Relax ``main``, checked: what a bundle can take."""
    if "main" not in [gv.name_hint for gv in optimized_mod.functions]:
        raise BundleError("the module has no 'main' function")
    main = optimized_mod["main"]
    if not isinstance(main, relax.Function):
        raise BundleError("'main' is not a Relax function")
    if not main.params:
        raise BundleError("'main' takes no input")
    in_shapes = [_static_shape(p.ty, f"input {p.name}") for p in main.params]
    return in_shapes


def kernel_calls(fused: tvm.IRModule, in_shapes: list, lean: bool, mve: bool = False) -> KernelCalls:
    """The calls of ``fused`` (the module after ``core.pipeline.fuse_pipeline``) in binding order (``mve``: the
    M-profile kernels for a core with Helium)."""
    main = fused["main"]

    call_tir = tvm.ir.Op.get("relax.call_tir")
    single_in = len(main.params) == 1
    in_tensors = []
    for i, (inp, shape) in enumerate(zip(main.params, in_shapes)):
        t = Tensor(inp.name, str(inp.ty.dtype), shape, Storage("input", 0, "in" if single_in else f"in{i}"))
        if t.dtype not in _CTYPES:
            raise BundleError(f"input {inp.name}: dtype {t.dtype} is not supported")
        t.storage.nbytes = t.nbytes
        in_tensors.append(t)
    env = dict(zip(main.params, in_tensors))  # relax Var -> Tensor or tuple of them
    consts = []  # (relax Constant, Tensor)
    steps = []
    funcs = {}  # C name -> PrimFunc
    raw_funcs = {}  # C name -> the PrimFunc as fused, before the lean schedule
    c_names = {}  # (GlobalVar name, indices of the constant args) -> C name
    used = set()

    def lookup(expr):
        if isinstance(expr, relax.Var):
            if expr not in env:
                raise BundleError(f"variable {expr.name} is used before it is defined")
            return env[expr]
        if isinstance(expr, tvm.ir.Constant):
            for c, t in consts:
                if c.same_as(expr):
                    return t
            arr = expr.value.numpy()
            name = f"tvm_bnn_w{len(consts)}"
            t = Tensor(name, str(arr.dtype), tuple(arr.shape), Storage("const", arr.nbytes, name))
            consts.append((expr, t))
            return t
        if isinstance(expr, relax.Tuple):
            return tuple(lookup(f) for f in expr.fields)
        raise BundleError(f"cannot handle the expression {type(expr).__name__}: {expr}")

    if not isinstance(main.body, relax.SeqExpr):
        raise BundleError("'main' has no binding blocks")
    for block in main.body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                raise BundleError(f"match_cast binding {binding.var.name} is not supported")
            var, value = binding.var, binding.value
            if isinstance(value, (relax.Var, tvm.ir.Constant, relax.Tuple)):
                env[var] = lookup(value)
                continue
            if isinstance(value, relax.TupleGetItem):
                tup = lookup(value.tuple_value)
                if not isinstance(tup, tuple):
                    raise BundleError(f"{var.name}: TupleGetItem of a non-tuple")
                env[var] = tup[value.index]
                continue
            if not (isinstance(value, relax.Call) and value.op.same_as(call_tir)):
                what = value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else \
                    type(value).__name__
                raise BundleError(f"{var.name} = {what}(...): after fusion only call_tir can go into the C "
                                  f"bundle (this op was not legalized to TIR)")
            if len(value.args) > 2:
                raise BundleError(f"{var.name}: call_tir with symbolic TIR arguments (dynamic shapes)")
            gv = value.args[0]
            func = fused[gv]
            if not isinstance(func, tvm.tirx.PrimFunc):
                raise BundleError(f"{var.name}: callee {gv.name_hint} is not a PrimFunc")
            if not isinstance(value.ty, relax.TensorType):
                raise BundleError(f"{var.name}: call_tir of {gv.name_hint} has several outputs; unsupported")
            shape = _static_shape(value.ty, f"the output of {gv.name_hint}")
            dtype = str(value.ty.dtype)
            if dtype not in _CTYPES:
                raise BundleError(f"{var.name}: dtype {dtype} is not supported")
            args = [lookup(a) for a in value.args[1].fields]
            if any(isinstance(a, tuple) for a in args):
                raise BundleError(f"{var.name}: a tuple argument to {gv.name_hint}")
            if len(func.params) != len(args) + 1:
                raise BundleError(f"{gv.name_hint} takes {len(func.params)} buffers, call passes {len(args) + 1}")
            src = args[0] if len(args) == 1 else None
            if (_VIEW_FUNC.fullmatch(gv.name_hint) and src is not None and src.storage.kind != "const"
                    and src.dtype == dtype and src.nbytes == int(np.prod(shape, dtype=np.int64)) *
                    np.dtype(dtype).itemsize):
                env[var] = Tensor(var.name, dtype, shape, src.storage)  # a view: same bytes, no call
                continue
            # a kernel may read its constants laid out at compile time: scheduled once per set of constant args
            key = (gv.name_hint, tuple(i for i, a in enumerate(args) if a.storage.kind == "const"))
            if key not in c_names:
                c_names[key] = _c_name(gv.name_hint, used)
                from ..schedules.cortexm import schedule_kernel  # M-profile kernels; schedules.lean for the rest
                funcs[c_names[key]] = schedule_kernel(func, mve, const_params=key[1]) if lean else func
            name = c_names[key]
            raw_funcs[name] = func
            args = _laid_out(funcs[name], args, consts)
            out = Tensor(var.name, dtype, shape, Storage("arena", 0))
            out.storage.nbytes = out.nbytes
            steps.append(Step(name, args + [out], out))
            env[var] = out

    out_tensors = flatten(lookup(main.body.body))
    if not out_tensors:
        raise BundleError("the model returns no tensor")
    read = {id(t.storage) for step in steps for t in step.args} | {id(t.storage) for t in out_tensors}
    consts = [(c, t) for c, t in consts if id(t.storage) in read]  # a constant only read laid out: that copy only
    return KernelCalls(in_tensors, out_tensors, consts, steps, funcs, raw_funcs)


def _laid_out(func, args: list, consts: list) -> list:
    """``args`` with the constant the scheduled ``func`` reads laid out at compile time (its attribute
    ``schedules.cortexm.CONST_LAYOUT``: the parameter and an IndexMap) replaced by that layout, a constant of its
    own (added to ``consts`` once per source constant and map)."""
    from ..schedules.cortexm import CONST_LAYOUT

    if func.attrs is None or CONST_LAYOUT not in func.attrs:
        return args
    index, index_map = int(func.attrs[CONST_LAYOUT][0]), func.attrs[CONST_LAYOUT][1]
    src = args[index]
    name = f"{src.storage.name}_{'_'.join(str(d) for d in index_map.map_shape(list(src.shape)))}"
    for _, t in consts:
        if t.storage.name == name:
            return args[:index] + [t] + args[index + 1:]
    arr = next(c.value.numpy() for c, t in consts if t is src)
    laid = index_map.map_tensor(tvm.runtime.tensor(arr)).numpy()
    t = Tensor(name, str(laid.dtype), tuple(laid.shape), Storage("const", laid.nbytes, name))
    consts.append((relax.const(laid), t))
    return args[:index] + [t] + args[index + 1:]


def _static_shape(ty, what: str) -> tuple:
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        raise BundleError(f"{what} has no static shape ({ty}); the C bundle needs static shapes")
    dims = []
    for d in shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            raise BundleError(f"{what} has a dynamic shape ({ty}); the C bundle needs static shapes")
        dims.append(int(d.value))
    return tuple(dims)


def _c_name(name: str, used: set) -> str:
    base = re.sub(r"\W", "_", name)
    if not base.startswith("tvm_bnn_"):
        base = "tvm_bnn_" + base
    out, k = base, 1
    while out in used:
        out, k = f"{base}_{k}", k + 1
    used.add(out)
    return out


def flatten(value) -> list:
    if isinstance(value, tuple):
        return [t for v in value for t in flatten(v)]
    return [value]


def numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))
