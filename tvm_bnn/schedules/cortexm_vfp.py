"""FPU register blocks of the float conv (the stem) on an M-profile core: loads of whole rows and weight groups.

``schedules/cortexm.schedule_float_conv`` accumulates a block of ``bo`` output channels x ``bx`` output pixels of a
row over the receptive field (input channels, then kernel rows, then kernel columns, the block innermost), the
block's weights laid out at compile time so that each tap's ``bo`` weights are consecutive and the taps follow in
the order the loop reads them, and marks the reduction loop (``ANNOTATION``). :func:`lower_fconv_blocks` replaces,
once the block is lowered, its zeroing, that loop nest and, when it is a plain copy, its write-back by one call of a
C helper ``tvm_bnn_fconv_<bo>x<bx>_<kh>x<kw>_s<stride>`` (``targets/c_codegen.fconv_helpers`` writes it). With a
single-precision FPU the helper keeps the block in S registers and per kernel row loads the row's inputs with one
VLDM, each tap's weights with one VLDM (post-increment: the weights stream), and adds every product with VMLA.F32:
``bo * bx`` products per tap for 1 + 1/kw loads, where C code compiled by gcc loads each operand with its own VLDR.
The products, their order and their rounding are those of the loop nest (VMLA multiplies, rounds, adds, rounds:
``acc + a * b``, never fused), so the results are bit-exact with it; the helper's portable branch is that loop nest
in C.

What is replaced is checked, not assumed: the reduction nest is exactly (channels, kernel rows, kernel columns,
block channels, block pixels) around ``acc = tvm_bnn_mla(acc, input, weight)``, the zeroing a store of 0 to every
accumulator, every address affine over the whole nest (schedules/loop_nests.py) with the strides the helper walks:
input pixels ``stride`` apart with consecutive kernel columns, the weights one stream, the accumulators [bo, bx];
and the registers must fit (at most 16 accumulators, and ``bo * bx + span + bo <= 32`` single-precision registers,
the span of a row's inputs being ``(bx - 1) * stride + kw``). Anything else keeps its loops (exact either way).
"""
from __future__ import annotations

from tvm import tirx

from . import lean
from .loop_nests import (CALL, LOAD, address_at_origin, affine, constant_extents, flat_offset, perfect_nest,
                         without_annotation)

ANNOTATION = "tvm_bnn.fconv_block"
S_REGISTERS = 32
MAX_ACCUMULATORS = 16  # the helper zeroes them with one VLDM of a 16-float table


def helper_name(bo: int, bx: int, kh: int, kw: int, stride: int) -> str:
    return f"tvm_bnn_fconv_{bo}x{bx}_{kh}x{kw}_s{stride}"


def fits(bo: int, bx: int, kw: int, stride: int) -> bool:
    """Whether a block's accumulators, one row's inputs and one tap's weights fit the FPU's S registers at once."""
    return bo * bx <= MAX_ACCUMULATORS and bo * bx + (bx - 1) * stride + kw + bo <= S_REGISTERS


def _block_roles(loops, bo: int, bx: int):
    """Which axis of the block [bo, bx] each loop of a 2-deep nest over it walks ("o", "x", or None for a loop of
    one iteration; lowering may also have dropped those), or None if the loops do not walk [bo, bx] in that order."""
    if not constant_extents(loops):
        return None
    extents = [int(lp.extent) for lp in loops]
    axes = [(axis, n) for axis, n in (("o", bo), ("x", bx)) if n > 1]
    if [n for n in extents if n > 1] != [n for _, n in axes]:
        return None
    wanted = iter(axis for axis, _ in axes)
    return [next(wanted) if n > 1 else None for n in extents]


def _strides_by_role(strides, roles) -> dict:
    return {role: s for s, role in zip(strides, roles) if role is not None}


def _accumulator_walk(roles, bx: int) -> dict:
    """The strides of the accumulators [bo, bx] along the walked axes."""
    return {role: s for role, s in (("o", bx), ("x", 1)) if role in roles}


def _zeroing(stmt, acc_buf, bo, bx) -> bool:
    """``stmt`` stores 0.0 to every accumulator of the block [bo, bx] (all of ``acc_buf``)."""
    loops, store = perfect_nest(stmt)
    roles = _block_roles(loops, bo, bx)
    if not (roles is not None and isinstance(store, tirx.BufferStore) and store.buffer.same_as(acc_buf)
            and isinstance(store.value, tirx.FloatImm) and float(store.value.value) == 0.0):
        return False
    acc = affine(flat_offset(store), loops)
    return acc is not None and _strides_by_role(acc[1], roles) == _accumulator_walk(roles, bx)


def _plain_copy(stmt, acc_buf, bo, bx):
    """(output store, its loops, output channel stride) if ``stmt`` copies the block [bo, bx] from ``acc_buf`` to an
    output of consecutive pixels, else None."""
    loops, store = perfect_nest(stmt)
    roles = _block_roles(loops, bo, bx)
    if not (roles is not None and isinstance(store, tirx.BufferStore) and str(store.buffer.dtype) == "float32"
            and isinstance(store.value, LOAD) and store.value.source.same_as(acc_buf)):
        return None
    src, dst = affine(flat_offset(store.value), loops), affine(flat_offset(store), loops)
    if src is None or dst is None:
        return None
    out = _strides_by_role(dst[1], roles)
    if _strides_by_role(src[1], roles) != _accumulator_walk(roles, bx) or out.get("x", 1) != 1:
        return None
    return store, loops, out.get("o", bx)


def _numel(buf) -> int:
    n = 1
    for d in buf.shape:
        n *= int(d)
    return n


def _reduction(loop: tirx.For):
    """What the helper needs from the reduction nest ``loop`` (channels, kh, kw, bo, bx), or None if it is not one."""
    loops, store = perfect_nest(loop)
    if not (len(loops) == 5 and constant_extents(loops) and isinstance(store, tirx.BufferStore)
            and str(store.buffer.dtype) == "float32"):
        return None
    channels, kh, kw, bo, bx = (int(lp.extent) for lp in loops)
    value = store.value
    if not (isinstance(value, CALL) and value.op.name == "tirx.call_pure_extern"
            and str(value.args[0].value) == "tvm_bnn_mla" and len(value.args) == 4):
        return None
    acc_load, a, b = value.args[1:]
    if not all(isinstance(v, LOAD) and str(v.source.dtype) == "float32" for v in (acc_load, a, b)):
        return None
    # the accumulators are the whole buffer [bo, bx] (the register block): an in-bounds walk with strides
    # [bx, 1] over it starts at its first element, wherever it is written from
    extents = [channels, kh, kw, bo, bx]
    acc, acc_read = affine(flat_offset(store), loops), affine(flat_offset(acc_load), loops)
    if (acc is None or acc_read is None or not _walks(acc[1], [0, 0, 0, bx, 1], extents)
            or not _walks(acc_read[1], acc[1], extents) or not acc_load.source.same_as(store.buffer)
            or _numel(store.buffer) != bo * bx):
        return None
    for x, w in ((a, b), (b, a)):
        xa, wa = affine(flat_offset(x), loops), affine(flat_offset(w), loops)
        if xa is None or wa is None:
            continue
        channel, row, _, _, stride = xa[1]
        stride = stride if bx > 1 else 1
        if (stride < 1 or not _walks(xa[1], [channel, row, 1, 0, stride], extents)
                or not _walks(wa[1], [kh * kw * bo, kw * bo, bo, 1, 0], extents)):
            continue
        if not fits(bo, bx, kw, stride):
            return None
        return dict(store=store, loops=loops, x=x, w=w, channels=channels, kh=kh, kw=kw, bo=bo, bx=bx,
                    stride=stride, row=row, channel=channel)
    return None


def _walks(strides, expected, extents) -> bool:
    """The strides are the expected ones on every loop that has more than one iteration."""
    return all(s == e for s, e, n in zip(strides, expected, extents) if n > 1)


def _call(red, dst_load, dst_loops, dst_stride):
    name = helper_name(red["bo"], red["bx"], red["kh"], red["kw"], red["stride"])
    loops = red["loops"]
    args = [address_at_origin(dst_load, dst_loops), dst_stride, address_at_origin(red["x"], loops), red["row"],
            red["channel"], address_at_origin(red["w"], loops), red["channels"]]
    return tirx.Evaluate(tirx.call_extern("int32", name, *[tirx.const(a, "int32") if isinstance(a, int) else a
                                                             for a in args]))


def _lower_sequence(items: list) -> list:
    """The statements ``items`` (a block body) with each [zeroing, marked reduction, write-back] run replaced."""
    out, i = [], 0
    while i < len(items):
        stmt = items[i]
        if not (isinstance(stmt, tirx.For) and ANNOTATION in stmt.annotations):
            out.append(stmt)
            i += 1
            continue
        red = _reduction(stmt)
        if red is None or not out or not _zeroing(out[-1], red["store"].buffer, red["bo"], red["bx"]):
            out.append(without_annotation(stmt, ANNOTATION))
            i += 1
            continue
        out.pop()  # the zeroing: the helper starts from zero
        copy = _plain_copy(items[i + 1], red["store"].buffer, red["bo"], red["bx"]) \
            if i + 1 < len(items) else None
        if copy is not None:  # the helper stores the block straight into the output
            out.append(_call(red, copy[0], copy[1], copy[2]))
            i += 2
        else:  # the write-back (an epilogue) reads the accumulators the helper stores
            out.append(_call(red, red["store"], red["loops"], red["bx"]))
            i += 1
    return out


def lower_fconv_blocks(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Every run [zeroing, loop marked with ``ANNOTATION``, write-back] replaced by its helper call, or the mark
    dropped where the nest is not of that form."""
    def replace(stmt):
        if not isinstance(stmt, tirx.SeqStmt) or not any(
                isinstance(s, tirx.For) and ANNOTATION in s.annotations for s in stmt.seq):
            return None
        items = _lower_sequence(list(stmt.seq))
        return items[0] if len(items) == 1 else tirx.SeqStmt(items)

    func = lean.map_statements(func, replace)
    return lean.map_statements(func, lambda s: without_annotation(s, ANNOTATION)
                               if isinstance(s, tirx.For) and ANNOTATION in s.annotations else None)
