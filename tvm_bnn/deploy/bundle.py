"""A standalone C bundle of a whole compiled model: plain C99, one static arena, weights in flash, no TVM runtime.

``build_bundle(optimized, out_dir, input_shape, output_shape)`` takes the Relax module of
``tvm_bnn.compiler.analyse`` (our binary kernels as ``call_tir``, float layers as Relax ops), runs
``fuse_pipeline()`` for target "c" (the float ops become fused TIR PrimFuncs), and writes:

* ``model.c``: every kernel as a plain C function (``targets.c_codegen.generate_c``: raw pointers, scratch buffers as
  trailing parameters) and ``int tvm_bnn_model_run(const float *in, float *out)`` (one pointer per input, then one
  per output: ``in0, in1, ..., out0, ...`` when there are several) calling them in order on one ``static uint8_t``
  arena (16-byte aligned) planned here; per-call hooks ``TVM_BNN_STEP_BEGIN/END`` are empty unless the instruction
  profiler builds it with ``-DTVM_BNN_PROFILE_STEPS``;
* ``weights.c``: every Relax constant the calls take, as a ``const`` array (flash on a microcontroller);
* ``model.h``, a ``Makefile`` (arm-none-eabi-gcc, ``CPU=cortex-m4`` by default) and a ``README.md``.

With ``target`` an LLVM ``TargetSpec`` (ARM Linux, or a Cortex-M thumb triple) the kernels get our vectorised
schedules instead and TVM's LLVM codegen compiles them into ``kernels.o`` (``targets.llvm_object``); ``model.c``
declares and calls them the same way. ARM Linux bundles keep their weights as ``weights.bin`` + ``weights.S``.

Arena planning: the calls run in binding order; a tensor occupies its bytes from the call that writes it to the last
call that reads it (or a view of it), a kernel's scratch buffers only during its call. Blocks are placed greedily
first-fit at 16-byte-aligned offsets. A call's output never overlaps its inputs (they are still live when it is
placed). Each model output is written straight into its output pointer (one that is an input, a constant or
another output's bytes is copied at the end); a pure view (a legalized ``reshape``, ``squeeze``, ``expand_dims`` or
``flatten`` of a contiguous tensor) is not run at all: it aliases its input's bytes.

Before the C codegen each kernel gets the M-profile schedule of ``schedules.cortexm`` (binary kernels) or the
memory-lean schedule of ``deploy.lean`` (``lean=True``): injective stages inlined, once-read reductions (the
popcount accumulators) computed per consumer iteration in a compacted buffer. On the digits demo model this cuts
the arena from 62,464 to 13,696 bytes at the same outputs.

The kernels access the arena through pointers of their own element types, so the bundle is compiled with
``-fno-strict-aliasing`` (the Makefile and the runners here do).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from ..core.pipeline import fuse_pipeline
from ..errors import TvmBnnError
from ..targets import qemu
from ..targets.c_codegen import _CTYPES, c_array, generate_c
from ..targets.llvm_object import generate_object

ALIGN = 16
_VIEW_FUNC = re.compile(r"(reshape|squeeze|expand_dims|flatten)\d*")
_MATH_FUNCS = ("expf", "exp", "sqrtf", "sqrt", "logf", "log", "powf", "pow", "tanhf", "tanh", "erff", "erf",
               "fabsf", "fabs", "floorf", "floor", "ceilf", "ceil", "roundf", "round", "nearbyintf", "nearbyint",
               "truncf", "trunc", "fmaxf", "fmax", "fminf", "fmin", "fmodf", "fmod", "sinf", "sin", "cosf", "cos",
               "expm1f", "log1pf", "exp2f", "log2f", "rsqrtf", "sigmoid")
CFLAGS_EXTRA = ("-fno-strict-aliasing",)


class BundleError(TvmBnnError, ValueError):
    """The model cannot be turned into a standalone C bundle."""


def _align(n: int) -> int:
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN


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


@dataclass(eq=False)
class _Storage:
    kind: str  # "arena", "input", "output", "const"
    nbytes: int
    name: str = ""  # const array name
    offset: int = -1
    first: int = -1  # step that writes it
    last: int = -1  # last step that reads it


@dataclass(eq=False)
class _Tensor:
    name: str
    dtype: str
    shape: tuple
    storage: _Storage

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class _Step:
    kernel: str  # C function name
    args: list  # _Tensor per PrimFunc parameter (inputs then output)
    out: _Tensor
    scratch: list = field(default_factory=list)  # _Storage per scratch parameter


class _FirstFit:
    def __init__(self):
        self.live = []  # (offset, size, storage)
        self.size = 0

    def alloc(self, st: _Storage):
        size = _align(max(st.nbytes, 1))
        offset = 0
        for off, sz, _ in sorted(self.live, key=lambda t: t[0]):
            if off - offset >= size:
                break
            offset = max(offset, off + sz)
        st.offset = offset
        self.live.append((offset, size, st))
        self.size = max(self.size, offset + size)

    def free(self, st: _Storage):
        self.live = [t for t in self.live if t[2] is not st]


@dataclass
class Bundle:
    """A written bundle. ``sources`` are the C files by name (model.h, model.c, weights.c)."""

    out_dir: Path
    files: dict  # name -> Path
    sources: dict  # name -> text of the C sources
    arena_bytes: int
    no_reuse_bytes: int  # the arena without reuse: every intermediate tensor and scratch buffer side by side
    weight_bytes: int
    inputs: list  # (shape, dtype) per input of tvm_bnn_model_run, in order
    outputs: list  # (shape, dtype) per output
    kernels: list  # C function names, in call order
    math_functions: tuple  # libm functions the kernels call (link -lm)
    intermediate_bytes: int = 0  # sum of the intermediate tensors' sizes (no scratch)
    plan: list = field(default_factory=list)  # arena blocks: (label, offset, nbytes, first step, last step)
    objects: dict = field(default_factory=dict)  # name -> bytes: LLVM-compiled kernels (ARM), linked with the C
    arch: str | None = None  # the ARM Linux architecture the objects are for (targets/qemu.LINUX_ARCHES)
    last_board_run: object = None

    @property
    def input_shape(self) -> tuple:
        return tuple(self.inputs[0][0])

    @property
    def output_shape(self) -> tuple:
        return tuple(self.outputs[0][0])

    @property
    def output_dtype(self) -> str:
        return self.outputs[0][1]

    def _main(self, xs, bracket: bool = True) -> str:
        """A main() running one inference on ``xs`` (an array, or one per input); ``bracket``: count the whole
        call (else the per-call hooks of model.c do)."""
        xs = [xs] if isinstance(xs, np.ndarray) else list(xs)
        if len(xs) != len(self.inputs):
            raise BundleError(f"the bundle takes {len(self.inputs)} input(s), got {len(xs)}")
        text = ['#include "model.h"\n#include "tvm_bnn_bm.h"\n\n']
        for i, (x, (shape, dtype)) in enumerate(zip(xs, self.inputs)):
            x = np.ascontiguousarray(np.asarray(x, dtype=dtype))
            if tuple(x.shape) != tuple(shape):
                raise BundleError(f"input {i}: shape {tuple(x.shape)} is not the bundle's {tuple(shape)}")
            text.append(c_array(f"g_input{i}", x))
        for i, (shape, dtype) in enumerate(self.outputs):
            text.append(f"static {_CTYPES[dtype]} g_output{i}[{max(1, _numel(shape))}] __attribute__((aligned(16)));\n")
        args = [f"g_input{i}" for i in range(len(self.inputs))] + [f"g_output{i}" for i in range(len(self.outputs))]
        begin, end = ("  tvm_bnn_bm_begin();\n", "  tvm_bnn_bm_end();\n") if bracket else ("", "")
        text.append(f"\nint main(void) {{\n{begin}  int rc = tvm_bnn_model_run({', '.join(args)});\n{end}")
        text += [f"  tvm_bnn_bm_output(g_output{i}, sizeof(g_output{i}));\n" for i in range(len(self.outputs))]
        text.append("  return rc;\n}\n")
        return "".join(text)

    def _result(self, raw: bytes):
        """The outputs' bytes, in order -> one array, or a tuple of them."""
        outs, offset = [], 0
        for shape, dtype in self.outputs:
            n = _numel(shape) * np.dtype(dtype).itemsize
            outs.append(np.frombuffer(raw[offset:offset + n], dtype).reshape(shape).copy())
            offset += n
        if offset != len(raw):
            raise BundleError(f"the program wrote {len(raw)} bytes of output, expected {offset}")
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run_host(self, x, cc: str = "gcc", workdir=None, opt: str = "-O2"):
        """Build the bundle + a main holding ``x`` with the host ``cc`` (-Wall -Wextra -Werror) and run it."""
        srcs = dict(self.sources, **{"test_main.c": self._main(x)})
        tmp = None if workdir else tempfile.mkdtemp(prefix=f"tvm_bnn_bundle_{cc}_")
        try:
            run = qemu.run_on_host(srcs, cc, workdir=workdir or tmp, opt=opt, extra_cflags=CFLAGS_EXTRA)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        return self._result(run.output)

    def run_linux(self, x, workdir=None, opt: str = "-O2"):
        """Cross-compile the bundle + a main holding ``x`` for its ARM Linux architecture (static) and run it
        under qemu-user."""
        if self.arch is None:
            raise BundleError("this bundle is not built for ARM Linux (no arch)")
        srcs = dict(self.sources, **{"test_main.c": self._main(x)})
        tmp = None if workdir else tempfile.mkdtemp(prefix=f"tvm_bnn_bundle_{self.arch}_")
        try:
            run = qemu.run_linux_user(srcs, self.arch, self.objects, workdir=workdir or tmp, opt=opt,
                                      extra_cflags=CFLAGS_EXTRA)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        return self._result(run.output)

    def count_instructions(self, x, workdir=None, opt: str = "-O2", per_call: bool = False) -> tuple:
        """(output, instructions of one ``tvm_bnn_model_run``) of an aarch64 bundle on a bare-metal AArch64 under
        ``qemu-system-aarch64 -icount`` (qemu-user, which ``run_linux`` uses, cannot count). ``per_call``: the
        instructions are a list of (kernel, instructions), one per call in order, instead of the total."""
        if self.arch != "aarch64":
            raise BundleError(f"instruction counts are measured for aarch64 bundles; this one is for {self.arch}")
        srcs = dict(self.sources, **{"test_main.c": self._main(x, bracket=not per_call)})
        hooks = ("-DTVM_BNN_PROFILE_STEPS",) if per_call else ()
        tmp = None if workdir else tempfile.mkdtemp(prefix="tvm_bnn_bundle_a64_")
        try:
            run = qemu.count_aarch64(srcs, self.objects, workdir=workdir or tmp, opt=opt,
                                     extra_cflags=(*CFLAGS_EXTRA, *hooks))
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        self.last_board_run = run
        return self._result(run.output), self._counts(run, per_call)

    def run_board(self, x, board: str = "cortex-m4", workdir=None, opt: str = "-O2", per_call: bool = False) -> tuple:
        """Firmware of the bundle + a main holding ``x`` on an emulated board: (output, instructions of one
        ``tvm_bnn_model_run``; with ``per_call``, a list of (kernel, instructions) per call in order). The BoardRun
        (sizes of .text/.data/.bss) is kept in ``last_board_run``."""
        srcs = dict(self.sources, **{"test_main.c": self._main(x, bracket=not per_call)})
        hooks = ("-DTVM_BNN_PROFILE_STEPS",) if per_call else ()
        run = qemu.run_on_board(srcs, board, workdir=workdir or tempfile.mkdtemp(prefix="tvm_bnn_bundle_fw_"),
                                opt=opt, extra_cflags=(*CFLAGS_EXTRA, *hooks), objects=self.objects)
        self.last_board_run = run
        return self._result(run.output), self._counts(run, per_call)

    def _counts(self, run, per_call: bool):
        if not per_call:
            return run.instructions
        if len(run.per_region) != len(self.kernels):
            raise BundleError(f"{len(run.per_region)} counted calls, {len(self.kernels)} kernel calls")
        return list(zip(self.kernels, run.per_region_instructions))


def _c_name(name: str, used: set) -> str:
    base = re.sub(r"\W", "_", name)
    if not base.startswith("tvm_bnn_"):
        base = "tvm_bnn_" + base
    out, k = base, 1
    while out in used:
        out, k = f"{base}_{k}", k + 1
    used.add(out)
    return out


def _serial_schedule(func, spec):
    """Our default schedule for ``spec``'s target (its parallel loops are made serial by ``generate_object``)."""
    from ..schedules.apply import default_schedule

    with spec.target:
        return default_schedule(func, spec)


def build_bundle(optimized_mod: tvm.IRModule, out_dir, input_shape=None, output_shape=None, *,
                 overwrite: bool = False, lean: bool = True, target=None) -> Bundle:
    """Write a standalone C bundle of ``optimized_mod`` (from ``tvm_bnn.compiler.analyse``) into ``out_dir``.

    ``lean``: inline the kernels' injective intermediate stages (``deploy.lean``), which shrinks the arena.
    ``target``: None for plain C kernels (TVM's C codegen), or a ``TargetSpec`` of family "arm": the kernels then
    get our vectorised schedules (serial: a bundle has no thread pool) and TVM's LLVM codegen compiles them into
    ``kernels.o`` (``targets.llvm_object``); ``model.c`` only declares and calls them."""
    llvm = target is not None and target.target.kind.name == "llvm"
    lean = lean and not llvm  # the vectorised schedules need the kernels' stages as the ops define them

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise BundleError(f"{str(out_dir)!r} exists and is not empty; pass overwrite=True to replace it")
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        else:
            out_dir.unlink()
    if "main" not in [gv.name_hint for gv in optimized_mod.functions]:
        raise BundleError("the module has no 'main' function")
    main = optimized_mod["main"]
    if not isinstance(main, relax.Function):
        raise BundleError("'main' is not a Relax function")
    if not main.params:
        raise BundleError("'main' takes no input")
    in_shapes = [_static_shape(p.ty, f"input {p.name}") for p in main.params]
    if input_shape is not None and tuple(input_shape) != in_shapes[0]:
        raise BundleError(f"input_shape={tuple(input_shape)} but the model's input is {in_shapes[0]}")

    with tvm.target.Target({"kind": "c"}), tvm.transform.PassContext(opt_level=3):
        fused = fuse_pipeline()(optimized_mod)
    main = fused["main"]

    call_tir = tvm.ir.Op.get("relax.call_tir")
    single_in = len(main.params) == 1
    in_tensors = []
    for i, (inp, shape) in enumerate(zip(main.params, in_shapes)):
        t = _Tensor(inp.name, str(inp.ty.dtype), shape, _Storage("input", 0, "in" if single_in else f"in{i}"))
        if t.dtype not in _CTYPES:
            raise BundleError(f"input {inp.name}: dtype {t.dtype} is not supported")
        t.storage.nbytes = t.nbytes
        in_tensors.append(t)
    env = dict(zip(main.params, in_tensors))  # relax Var -> _Tensor or tuple of them
    consts = []  # (relax Constant, _Tensor)
    steps = []
    funcs = {}  # C name -> PrimFunc
    raw_funcs = {}  # C name -> the PrimFunc as fused, before the lean schedule
    c_names = {}  # GlobalVar name -> C name
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
            t = _Tensor(name, str(arr.dtype), tuple(arr.shape), _Storage("const", arr.nbytes, name))
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
                env[var] = _Tensor(var.name, dtype, shape, src.storage)  # a view: same bytes, no call
                continue
            if gv.name_hint not in c_names:
                c_names[gv.name_hint] = _c_name(gv.name_hint, used)
                from ..schedules.cortexm import schedule_kernel  # M-profile kernels; deploy.lean for the rest
                funcs[c_names[gv.name_hint]] = schedule_kernel(func) if lean else func
            raw_funcs[c_names[gv.name_hint]] = func
            out = _Tensor(var.name, dtype, shape, _Storage("arena", 0))
            out.storage.nbytes = out.nbytes
            steps.append(_Step(c_names[gv.name_hint], args + [out], out))
            env[var] = out

    out_tensors = _flatten(lookup(main.body.body))
    if not out_tensors:
        raise BundleError("the model returns no tensor")
    single_out = len(out_tensors) == 1
    if output_shape is not None and tuple(output_shape) != tuple(out_tensors[0].shape):
        raise BundleError(f"output_shape={tuple(output_shape)} but the model's output is {out_tensors[0].shape}")
    if not steps:
        raise BundleError("the model has no kernel call")

    if llvm:
        src = generate_object({name: _serial_schedule(func, target) for name, func in raw_funcs.items()},
                              target.target)
        math = tuple(f for f in _MATH_FUNCS if re.search(rf"^declare .*@{f}\(", src.llvm_ir, re.M))
    else:
        src = generate_c(funcs)
        math = tuple(f for f in _MATH_FUNCS if re.search(rf"\b{f}\(", src.code))
    code = src.code

    # storage lifetimes; each output is computed in place in the caller's buffer unless it is an input, a constant
    # or another output's bytes (then copied at the end)
    copies = []  # (output index, tensor)
    for i, t in enumerate(out_tensors):
        if t.storage.kind == "arena":
            t.storage.kind, t.storage.name = "output", "out" if single_out else f"out{i}"
        else:
            copies.append((i, t))
    for i, step in enumerate(steps):
        kernel = src.kernels[step.kernel]
        nparam = len(step.args)
        for t, p in zip(step.args, kernel.params[:nparam]):
            if (p.dtype, p.size) != (t.dtype, int(np.prod(t.shape, dtype=np.int64))):
                raise BundleError(f"{step.kernel}: parameter {p.name} is {p.dtype}[{p.size}], the call passes "
                                  f"{t.dtype}{list(t.shape)}")
        for t, p in zip(step.args[:-1], kernel.params[:nparam - 1]):
            if t.storage.kind in ("input", "const") and not p.readonly:
                raise BundleError(f"{step.kernel} writes its input {p.name}, which is read-only here")
            t.storage.last = max(t.storage.last, i)
        step.out.storage.first = i
        step.out.storage.last = max(step.out.storage.last, i)
        step.scratch = [_Storage("arena", p.nbytes, first=i, last=i) for p in kernel.params[nparam:]]

    # first-fit arena planning in call order
    plan = _FirstFit()
    no_reuse = 0
    intermediate = 0
    for i, step in enumerate(steps):
        for st in [step.out.storage] + step.scratch:
            if st.kind == "arena":
                plan.alloc(st)
                no_reuse += _align(max(st.nbytes, 1))
                if st is step.out.storage:
                    intermediate += st.nbytes
        for st in step.scratch:
            plan.free(st)
        for t in step.args:
            if t.storage.kind == "arena" and t.storage.last <= i:
                plan.free(t.storage)
    arena_bytes = plan.size
    blocks = []
    for step in steps:
        if step.out.storage.kind == "arena":
            st = step.out.storage
            blocks.append((step.out.name, st.offset, st.nbytes, st.first, st.last))
        blocks += [(f"{step.kernel}.scratch{j}", st.offset, st.nbytes, st.first, st.last)
                   for j, st in enumerate(step.scratch)]

    # model.c
    def ref(t: _Tensor, p) -> str:
        st = t.storage
        if st.kind in ("input", "output", "const"):
            return st.name
        return f"({p.ctype} *)(tvm_bnn_arena + {st.offset})"

    out_names = ["out"] if single_out else [f"out{i}" for i in range(len(out_tensors))]
    signature = _run_signature(in_tensors, out_tensors, out_names)
    sizes = "".join(f"#define TVM_BNN_INPUT{i}_SIZE {_numel(t.shape)} /* {t.name}: {t.dtype}{list(t.shape)} */\n"
                    for i, t in enumerate(in_tensors))
    sizes += "".join(f"#define TVM_BNN_OUTPUT{i}_SIZE {_numel(t.shape)} /* {t.dtype}{list(t.shape)} */\n"
                     for i, t in enumerate(out_tensors))
    if single_in:
        sizes += f"#define TVM_BNN_INPUT_SIZE {_numel(in_tensors[0].shape)}\n"
    if single_out:
        sizes += f"#define TVM_BNN_OUTPUT_SIZE {_numel(out_tensors[0].shape)}\n"
    header = (f"/* Generated by tvm_bnn.deploy.bundle: a standalone C99 model, no TVM runtime, no malloc. */\n"
              f"#ifndef TVM_BNN_MODEL_H\n#define TVM_BNN_MODEL_H\n#include <stdint.h>\n\n"
              f"/* inputs and outputs in C order */\n{sizes}"
              f"#define TVM_BNN_NUM_INPUTS {len(in_tensors)}\n#define TVM_BNN_NUM_OUTPUTS {len(out_tensors)}\n"
              f"#define TVM_BNN_ARENA_BYTES {arena_bytes}\n\n"
              f"#ifdef __cplusplus\nextern \"C\" {{\n#endif\n"
              f"/* Runs one inference: reads TVM_BNN_INPUT<i>_SIZE values from each input, writes\n"
              f"   TVM_BNN_OUTPUT<i>_SIZE values to each output. Not reentrant (one static arena of\n"
              f"   TVM_BNN_ARENA_BYTES bytes). Returns 0. */\n"
              f"{signature};\n"
              f"#ifdef __cplusplus\n}}\n#endif\n#endif\n")
    lines = [f'#include "model.h"\n\n', code, "\n/* weights.c */\n"]
    for _, t in consts:
        count = max(1, t.storage.nbytes // np.dtype(t.dtype).itemsize)
        lines.append(f"extern const {_CTYPES[t.dtype]} {t.storage.name}[{count}];\n")
    if arena_bytes:
        lines.append(f"\n/* all intermediate tensors and scratch buffers, reused by liveness "
                     f"({no_reuse} bytes without reuse) */\n"
                     f"static uint8_t tvm_bnn_arena[{arena_bytes}] __attribute__((aligned({ALIGN})));\n")
    lines.append("\n#ifdef TVM_BNN_PROFILE_STEPS /* tvm_bnn's instruction profiler: one counted region per call */\n"
                 "void tvm_bnn_bm_begin(void);\nvoid tvm_bnn_bm_end(void);\n"
                 "#define TVM_BNN_STEP_BEGIN(step) tvm_bnn_bm_begin()\n#define TVM_BNN_STEP_END(step) tvm_bnn_bm_end()\n"
                 "#else\n#define TVM_BNN_STEP_BEGIN(step)\n#define TVM_BNN_STEP_END(step)\n#endif\n")
    lines.append(f"\n{signature} {{\n")
    for i, step in enumerate(steps):
        kernel = src.kernels[step.kernel]
        refs = [ref(t, p) for t, p in zip(step.args, kernel.params)]
        refs += [f"({p.ctype} *)(tvm_bnn_arena + {st.offset})" for st, p in
                 zip(step.scratch, kernel.params[len(step.args):])]
        lines.append(f"  /* {step.out.name}: {step.out.dtype}{list(step.out.shape)} */\n"
                     f"  TVM_BNN_STEP_BEGIN({i});\n  {step.kernel}({', '.join(refs)});\n"
                     f"  TVM_BNN_STEP_END({i});\n")
    for i, t in copies:
        lines.append(f"  __builtin_memcpy({out_names[i]}, {ref(t, None)}, {t.nbytes});\n")
    lines.append("  return 0;\n}\n")
    model_c = "".join(lines)
    # ARM Linux models can be large: weights as a blob; on a microcontroller they are small, and C arrays port
    weights = _weights_blob(consts) if llvm and target.family == "arm" else {"weights.c": _weights_c(consts)}
    weight_bytes = sum(t.storage.nbytes for _, t in consts)

    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {"model.h": header, "model.c": model_c, **weights}
    objects = {"kernels.o": src.object_bytes} if llvm else {}
    arch = target.board if llvm and target.family == "arm" else None
    files = {}
    for name, text in list(sources.items()) + [("Makefile", _makefile(math, arch, bool(objects))), ("README.md", _readme(
            signature, arena_bytes, no_reuse, weight_bytes, steps, math, arch))]:
        if isinstance(text, bytes):
            (out_dir / name).write_bytes(text)
        else:
            (out_dir / name).write_text(text)
        files[name] = out_dir / name
    for name, data in objects.items():
        (out_dir / name).write_bytes(data)
        files[name] = out_dir / name
    return Bundle(out_dir, files, sources, arena_bytes, no_reuse, weight_bytes,
                  [(t.shape, t.dtype) for t in in_tensors], [(tuple(t.shape), t.dtype) for t in out_tensors],
                  [s.kernel for s in steps], math, intermediate, blocks, objects=objects, arch=arch)


def _flatten(value) -> list:
    if isinstance(value, tuple):
        return [t for v in value for t in _flatten(v)]
    return [value]


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _run_signature(in_tensors, out_tensors, out_names) -> str:
    params = [f"const {_CTYPES[t.dtype]} *{t.storage.name}" for t in in_tensors]
    params += [f"{_CTYPES[t.dtype]} *{name}" for t, name in zip(out_tensors, out_names)]
    return f"int tvm_bnn_model_run({', '.join(params)})"


def _weights_c(consts) -> str:
    """The constants as C arrays (``weights.c``: readable, and any C toolchain takes it)."""
    text = ["/* Generated by tvm_bnn.deploy.bundle: the model's constants (const: flash). */\n"
            "#include <stdint.h>\n#include <stdbool.h>\n\n"]
    for _, t in consts:
        arr = _const_array(t, consts)
        text.append(f"extern const {_CTYPES[str(arr.dtype)]} {t.storage.name}[{max(1, arr.size)}];\n")
        text.append(c_array(t.storage.name, arr, const=True, static=False) + "\n")
    return "".join(text)


def _weights_blob(consts) -> dict:
    """The constants as one binary blob (``weights.bin``) and an assembler file (``weights.S``) that includes it and
    names each array: a large model's weights as C literals would be hundreds of MB of C."""
    blob, asm = bytearray(), ["/* Generated by tvm_bnn.deploy.bundle: the model's constants, from weights.bin */\n",
                              '\t.section .rodata.tvm_bnn_weights, "a"\n']
    for _, t in consts:
        arr = _const_array(t, consts)
        blob += b"\0" * (-len(blob) % ALIGN)
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes() or b"\0"
        asm.append(f"\t.balign {ALIGN}\n\t.global {t.storage.name}\n\t.type {t.storage.name}, %object\n"
                   f"{t.storage.name}:\n\t.incbin \"weights.bin\", {len(blob)}, {len(data)}\n"
                   f"\t.size {t.storage.name}, {len(data)}\n")
        blob += data
    asm.append('\t.section .note.GNU-stack, "", %progbits\n')
    return {"weights.S": "".join(asm), "weights.bin": bytes(blob or b"\0")}


def _const_array(t: _Tensor, consts) -> np.ndarray:
    for c, tt in consts:
        if tt is t:
            return np.ascontiguousarray(c.value.numpy())
    raise AssertionError(t.name)


def _makefile(math, arch=None, kernel_objects: bool = False) -> str:
    if arch is not None:
        a = qemu.linux_arch(arch)
        return f"""# Builds libtvm_bnn_model.a for {arch} Linux: make [CROSS={a.cc[:-3]}]
# kernels.o holds the kernels (NEON), compiled by TVM's LLVM codegen for {arch}; model.c calls them.
CROSS ?= {a.cc[:-3]}
OPT ?= -O2
CC = $(CROSS)gcc
AR = $(CROSS)ar
CFLAGS += {' '.join(a.cflags)} -std=c99 $(OPT) -fno-strict-aliasing -Wall -Wextra
# link the library with your program and -lm

OBJS = model.o weights.o kernels.o

libtvm_bnn_model.a: $(OBJS)
	$(AR) rcs $@ $^

%.o: %.c model.h
	$(CC) $(CFLAGS) -c $< -o $@

weights.o: weights.S weights.bin
	$(CC) -I. -c $< -o $@

clean:
	rm -f model.o weights.o libtvm_bnn_model.a

.PHONY: clean
"""
    return f"""# Builds libtvm_bnn_model.a for a Cortex-M: make [CPU=cortex-m7] [FLOAT_ABI=softfp] [FPU=fpv5-d16]
CROSS ?= arm-none-eabi-
CPU ?= cortex-m4
FLOAT_ABI ?= hard
FPU ?= fpv4-sp-d16
OPT ?= -O2
ifeq ($(FLOAT_ABI),soft)
FPU_FLAGS = -mfloat-abi=soft
else
FPU_FLAGS = -mfloat-abi=$(FLOAT_ABI) -mfpu=$(FPU)
endif
CC = $(CROSS)gcc
AR = $(CROSS)ar
SIZE = $(CROSS)size
CFLAGS += -mcpu=$(CPU) -mthumb $(FPU_FLAGS) -std=c99 $(OPT) -ffreestanding -fno-strict-aliasing \\
	-ffunction-sections -fdata-sections -Wall -Wextra
# link the library with your firmware{' and -lm (the kernels call ' + ', '.join(math) + ')' if math else ''}

OBJS = model.o weights.o{" kernels.o" if kernel_objects else ""}

libtvm_bnn_model.a: $(OBJS)
	$(AR) rcs $@ $^
	$(SIZE) $^

%.o: %.c model.h
	$(CC) $(CFLAGS) -c $< -o $@

clean:
	rm -f $(OBJS) libtvm_bnn_model.a

.PHONY: clean
"""


def _readme(signature, arena, no_reuse, weights, steps, math, arch=None) -> str:
    libm = "; the kernels call " + ", ".join(f"`{m}`" for m in math) + " (link `-lm`)" if math else ""
    calls = "\n".join(f"{i + 1}. `{s.kernel}` -> {s.out.dtype}{list(s.out.shape)}" for i, s in enumerate(steps))
    if arch is not None:
        a = qemu.linux_arch(arch)
        return f"""# tvm_bnn model bundle for {arch} Linux

Generated by `tvm_bnn.deploy.bundle.build_bundle`: the kernels (NEON popcount) in `kernels.o`, compiled by TVM's
LLVM codegen for {arch}; `model.c` (the run function over one static arena) in C99; the constants in `weights.bin`,
named by `weights.S` (`.incbin`; assemble it with `-I` pointing at this directory). No TVM
runtime, no malloc, single-threaded{libm}.

- `model.h`: `{signature};` (each buffer in C order; `TVM_BNN_INPUT<i>_SIZE` and `TVM_BNN_OUTPUT<i>_SIZE` give
  the element counts and shapes). Not reentrant: one static arena.
- Arena: {arena} bytes (`TVM_BNN_ARENA_BYTES`; {no_reuse} bytes without reuse); weights: {weights} bytes.

Build: `make` ({a.cc}) gives `libtvm_bnn_model.a`; link it into your program with `-lm`, or build directly:
`{a.cc} {' '.join(a.cflags)} -O2 -fno-strict-aliasing -I. main.c model.c weights.S kernels.o -lm`.

Calls per inference:

{calls}
"""
    return f"""# tvm_bnn model bundle

Generated by `tvm_bnn.deploy.bundle.build_bundle`: plain C99, no TVM runtime, no malloc, no libc beyond what gcc
itself may call (`memcpy`/`memset`){libm}.

- `model.h`: `{signature};` (each buffer in C order; `TVM_BNN_INPUT<i>_SIZE` and `TVM_BNN_OUTPUT<i>_SIZE` give
  the element counts and shapes; with one input and one output also `TVM_BNN_INPUT_SIZE`/`TVM_BNN_OUTPUT_SIZE`).
  Not reentrant: one static arena.
- `model.c`: the kernels and the run function; `weights.c`: the constants ({weights} bytes, `const`, so in flash).
- Arena: {arena} bytes of RAM (`TVM_BNN_ARENA_BYTES`; {no_reuse} bytes without reuse), 16-byte aligned.

Build: `make` (arm-none-eabi-gcc, `CPU=cortex-m4` by default; e.g. `make CPU=cortex-m7 FPU=fpv5-d16`,
`make CPU=cortex-m0 FLOAT_ABI=soft`) gives `libtvm_bnn_model.a`; or add `model.c` and `weights.c` to your project.
Compile with `-fno-strict-aliasing` (the kernels share the arena through pointers of different types).

```c
#include "model.h"
static float input[TVM_BNN_INPUT_SIZE], output[TVM_BNN_OUTPUT_SIZE];
/* fill input */
tvm_bnn_model_run(input, output);
```

Calls per inference:

{calls}
"""
