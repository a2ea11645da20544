"""A standalone C bundle of a whole compiled model: plain C99, one static arena, weights in flash, no TVM runtime.

``build_bundle(optimized, out_dir, input_shape, output_shape)`` takes the Relax module of
``tvm_bnn.core.pipeline.analyse`` (our binary kernels as ``call_tir``, float layers as Relax ops), runs
``fuse_pipeline()`` for target "c" (the float ops become fused TIR PrimFuncs), and writes:

* ``model.c``: every kernel as a plain C function (``targets.c_codegen.generate_c``: raw pointers, scratch buffers as
  trailing parameters) and ``int tvm_bnn_model_run(const float *in, float *out)`` (one pointer per input, then one
  per output: ``in0, in1, ..., out0, ...`` when there are several) calling them in order on one ``static uint8_t``
  arena (16-byte aligned) planned here; per-call hooks ``TVM_BNN_STEP_BEGIN/END`` are empty unless the instruction
  profiler builds it with ``-DTVM_BNN_PROFILE_STEPS``;
* ``weights.c``: every Relax constant the calls take, as a ``const`` array (flash on a microcontroller);
* ``model.h``, a ``Makefile`` (arm-none-eabi-gcc, ``CPU=cortex-m4`` by default), a ``CMakeLists.txt`` (the library
  ``tvm_bnn_model`` for a firmware that ``add_subdirectory``'s the bundle) and a ``README.md``.

With ``target`` an LLVM ``TargetSpec`` (ARM Linux, or a Cortex-M thumb triple) the kernels get our vectorised
schedules instead and TVM's LLVM codegen compiles them into ``kernels.o`` (``targets.llvm_object``); ``model.c``
declares and calls them the same way. ARM Linux bundles keep their weights as ``weights.bin`` + ``weights.S``.

Arena planning: the calls run in binding order; a tensor occupies its bytes from the call that writes it to the last
call that reads it (or a view of it), a kernel's scratch buffers only during its call. Blocks are placed greedily
first-fit at 16-byte-aligned offsets (``deploy.arena``). A call's output never overlaps its inputs (they are still
live when it is placed). Each model output is written straight into its output pointer (one that is an input, a
constant or another output's bytes is copied at the end); a pure view (a legalized ``reshape``, ``squeeze``,
``expand_dims`` or ``flatten`` of a contiguous tensor) is not run at all: it aliases its input's bytes.

Before the C codegen each kernel gets the M-profile schedule of ``schedules.cortexm`` (binary kernels) or the
memory-lean schedule of ``schedules.lean`` (``lean=True``): injective stages inlined, once-read reductions (the
popcount accumulators) computed per consumer iteration in a compacted buffer. On the digits demo model this cuts
the arena from 62,464 to 13,696 bytes at the same outputs.

The kernels access the arena through pointers of their own element types, so the bundle is compiled with
``-fno-strict-aliasing`` (the Makefile and the runners here do).

The jobs, one module each: ``kernel_calls`` (the fused main as calls over tensors and their storage), ``arena``
(the planner), ``c_writer`` (model.h, model.c), ``weights`` (weights.c / weights.bin), ``toolchain`` (flags, libm,
Makefile, README); ``build_bundle`` here strings them together and ``Bundle`` runs the result.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm

from ..core.pipeline import fuse_pipeline
from ..errors import BundleError
from ..schedules.pack_planes import PackPlanesTogether
from ..schedules.ternary_pairs import FuseTernaryPairs, few_words_per_output
from ..targets import qemu
from ..targets.c_codegen import _CTYPES, c_array, generate_c
from ..targets.llvm_object import generate_object
from .arena import Block, no_reuse_size, plan_arena
from .c_writer import model_c, model_h, output_names, run_signature
from .kernel_calls import Storage, input_shapes, kernel_calls, numel
from .toolchain import CFLAGS_EXTRA, cmakelists, makefile, math_functions, readme
from .weights import weights_blob, weights_c

__all__ = ["Bundle", "BundleError", "build_bundle"]


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
            text.append(f"static {_CTYPES[dtype]} g_output{i}[{max(1, numel(shape))}] __attribute__((aligned(16)));\n")
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
            n = numel(shape) * np.dtype(dtype).itemsize
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
        """(output, instructions of one ``tvm_bnn_model_run``) of an ARM Linux bundle on a bare-metal machine of
        its architecture under QEMU ``-icount`` (``qemu.count_bare_metal``: a Cortex-A72 for aarch64, a Cortex-A7
        for armv7; qemu-user, which ``run_linux`` uses, cannot count). ``per_call``: the instructions are a list of
        (kernel, instructions), one per call in order, instead of the total."""
        if self.arch not in qemu.BARE_METAL_ARCHES:
            raise BundleError(f"instruction counts are measured for ARM Linux bundles "
                              f"({', '.join(qemu.BARE_METAL_ARCHES)}); this one is for {self.arch or 'no arch'}")
        srcs = dict(self.sources, **{"test_main.c": self._main(x, bracket=not per_call)})
        hooks = ("-DTVM_BNN_PROFILE_STEPS",) if per_call else ()
        tmp = None if workdir else tempfile.mkdtemp(prefix=f"tvm_bnn_bundle_{self.arch}_bm_")
        try:
            run = qemu.count_bare_metal(srcs, self.arch, self.objects, workdir=workdir or tmp, opt=opt,
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
        output, counts, run = self.board_run(x, board, workdir, opt, per_call)
        self.last_board_run = run
        return output, counts

    def board_run(self, x, board: str = "cortex-m4", workdir=None, opt: str = "-O2", per_call: bool = False) -> tuple:
        """``run_board`` returning its BoardRun too, (output, instructions, run), and keeping nothing: for callers
        in several threads at once (``last_board_run`` is whichever run ended last). Each run builds in a directory
        of its own (``workdir``, else a new temporary one, left for the caller: ``run.elf`` is in it)."""
        srcs = dict(self.sources, **{"test_main.c": self._main(x, bracket=not per_call)})
        hooks = ("-DTVM_BNN_PROFILE_STEPS",) if per_call else ()
        run = qemu.run_on_board(srcs, board, workdir=workdir or tempfile.mkdtemp(prefix="tvm_bnn_bundle_fw_"),
                                opt=opt, extra_cflags=(*CFLAGS_EXTRA, *hooks), objects=self.objects,
                                libm=bool(self.math_functions))
        return self._result(run.output), self._counts(run, per_call), run

    def _counts(self, run, per_call: bool):
        if not per_call:
            return run.instructions
        if len(run.per_region) != len(self.kernels):
            raise BundleError(f"{len(run.per_region)} counted calls, {len(self.kernels)} kernel calls")
        return list(zip(self.kernels, run.per_region_instructions))



def _serial_schedule(func, spec):
    """Our default schedule for ``spec``'s target (its parallel loops are made serial by ``generate_object``)."""
    from ..schedules.apply import default_schedule

    with spec.target:
        return default_schedule(func, spec)



def build_bundle(optimized_mod: tvm.IRModule, out_dir, input_shape=None, output_shape=None, *,
                 overwrite: bool = False, lean: bool = True, target=None, mve: bool = False) -> Bundle:
    """Write a standalone C bundle of ``optimized_mod`` (from ``tvm_bnn.core.pipeline.analyse``) into ``out_dir``.

    ``lean``: inline the kernels' injective intermediate stages (``schedules.lean``), which shrinks the arena.
    ``mve``: the C kernels are for a core with Helium (Cortex-M55; they still compile and run without it).
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
    in_shapes = input_shapes(optimized_mod)
    if input_shape is not None and tuple(input_shape) != in_shapes[0]:
        raise BundleError(f"input_shape={tuple(input_shape)} but the model's input is {in_shapes[0]}")

    with tvm.target.Target({"kind": "c"}), tvm.transform.PassContext(opt_level=3):
        # an LLVM (ARM) bundle's binary convs read their weights laid out at compile time, as its kernels want them;
        # the C kernels count bits in software: a ternary layer's two weight planes as one ternary kernel, and the
        # planes of a few-level activation packed in one pass
        if not llvm:
            # (stacked planes on M-profile cores without Helium, where they pay: the MVE form counts one plane)
            stacking = False if mve else few_words_per_output
            optimized_mod = PackPlanesTogether(FuseTernaryPairs(stack_planes=stacking)(optimized_mod))
        fused = fuse_pipeline(target.target if llvm else None)(optimized_mod)
    calls = kernel_calls(fused, in_shapes, lean, mve and not llvm)
    in_tensors, out_tensors, consts, steps = calls.in_tensors, calls.out_tensors, calls.consts, calls.steps
    if output_shape is not None and tuple(output_shape) != tuple(out_tensors[0].shape):
        raise BundleError(f"output_shape={tuple(output_shape)} but the model's output is {out_tensors[0].shape}")
    if not steps:
        raise BundleError("the model has no kernel call")

    if llvm:
        src = generate_object({name: _serial_schedule(func, target) for name, func in calls.raw_funcs.items()},
                              target.target)
    else:
        src = generate_c(calls.funcs)
    math = math_functions(src, llvm)

    copies = _place_outputs(out_tensors)
    _set_lifetimes(steps, src.kernels)
    arena_bytes, no_reuse, intermediate, blocks = _plan_arena(steps)

    signature = run_signature(in_tensors, out_tensors, output_names(out_tensors))
    header = model_h(in_tensors, out_tensors, signature, arena_bytes)
    source = model_c(src, calls, copies, signature, arena_bytes, no_reuse)
    # ARM Linux models can be large: weights as a blob; on a microcontroller they are small, and C arrays port
    weights = weights_blob(consts) if llvm and target.family == "arm" else {"weights.c": weights_c(consts)}
    weight_bytes = sum(t.storage.nbytes for _, t in consts)

    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {"model.h": header, "model.c": source, **weights}
    objects = {"kernels.o": src.object_bytes} if llvm else {}
    arch = target.board if llvm and target.family == "arm" else None
    files = {}
    build_files = {"Makefile": makefile(math, arch, bool(objects)),
                   "CMakeLists.txt": cmakelists(math, arch, bool(objects)),
                   "README.md": readme(signature, arena_bytes, no_reuse, weight_bytes, steps, math, arch)}
    for name, text in {**sources, **build_files}.items():
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


def _place_outputs(out_tensors) -> list:
    """Each output is computed in place in the caller's buffer unless it is an input, a constant or another
    output's bytes: those are copied at the end. Returns the copies, (output index, tensor)."""
    single_out = len(out_tensors) == 1
    copies = []  # (output index, tensor)
    for i, t in enumerate(out_tensors):
        if t.storage.kind == "arena":
            t.storage.kind, t.storage.name = "output", "out" if single_out else f"out{i}"
        else:
            copies.append((i, t))
    return copies


def _set_lifetimes(steps, kernels) -> None:
    """Each storage's first and last step (the call that writes it, the last call that reads it), each call's
    scratch storage; every call checked against its kernel's parameters."""
    for i, step in enumerate(steps):
        kernel = kernels[step.kernel]
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
        step.scratch = [Storage("arena", p.nbytes, first=i, last=i) for p in kernel.params[nparam:]]


def _plan_arena(steps) -> tuple:
    """Offsets of every arena storage, in call order (a call's output before its scratch buffers): (arena bytes,
    bytes without reuse, bytes of the intermediate tensors, the blocks as (label, offset, bytes, first, last))."""
    arena = [st for step in steps for st in [step.out.storage] + step.scratch if st.kind == "arena"]
    lifetimes = [Block(st.nbytes, st.first, st.last) for st in arena]
    plan = plan_arena(lifetimes)
    for st, offset in zip(arena, plan.offsets):
        st.offset = offset
    intermediate = sum(step.out.storage.nbytes for step in steps if step.out.storage.kind == "arena")
    blocks = []
    for step in steps:
        if step.out.storage.kind == "arena":
            st = step.out.storage
            blocks.append((step.out.name, st.offset, st.nbytes, st.first, st.last))
        blocks += [(f"{step.kernel}.scratch{j}", st.offset, st.nbytes, st.first, st.last)
                   for j, st in enumerate(step.scratch)]
    return plan.size, no_reuse_size(lifetimes), intermediate, blocks
