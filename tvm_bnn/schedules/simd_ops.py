"""Our TIR ops for byte-lane bit counting (``tvm_bnn.simd.<kind>.<arch>``), each pure and vectorizable, with an LLVM
lowering rule per architecture.

``LowerIntrin`` runs after ``VectorizeLoop``, so a rule sees the vector width and emits the target intrinsic where it
fits (``llvm.x86.avx2.psad.bw``, ``llvm.aarch64.neon.uaddlp``, ``llvm.aarch64.neon.udot``, ``llvm.arm.neon.vpadalu``),
else the same value from generic shifts and masks. The kinds: ``nibcount`` (a nibble plane's byte counts, one table
lookup), ``padal`` (pairwise widening add into u16 counters), ``pairs`` / ``quads`` (byte counts summed into u16 /
u32 fields), ``add16`` / ``add32`` (lane-wise adds), ``sum8`` / ``sum16`` / ``sum32`` (a u64 lane's counters summed).
``schedules/simd_bytes.py`` builds its kernels from them.
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.ir import register_op_attr

_ARCHES = ("x86", "aarch64", "armv7")
_KINDS = ("nibcount", "padal", "pairs", "quads", "add16", "add32", "sum8", "sum16", "sum32")


def _lanes(expr) -> int:
    return tvm.DataType(str(expr.ty)).lanes


def _vt(bits: int, lanes: int) -> str:
    return f"uint{bits}" if lanes == 1 else f"uint{bits}x{lanes}"


def _const(value: int, lanes: int):
    c = tirx.const(value, "uint64")
    return c if lanes == 1 else tirx.Broadcast(c, lanes)


def _view(expr, bits: int, lanes: int):
    """The u64 (x lanes) ``expr`` as ``64 // bits * lanes`` lanes of ``bits``."""
    return tirx.reinterpret(_vt(bits, 64 // bits * lanes), expr)


def _u64(expr, lanes: int):
    return tirx.reinterpret(_vt(64, lanes), expr)


def _fold(v, shift: int, lanes: int):
    """Adjacent ``shift``-bit fields of each u64 lane summed into ``2*shift``-bit fields (generic shifts and masks)."""
    mask = {8: 0x00FF00FF00FF00FF, 16: 0x0000FFFF0000FFFF, 32: 0x00000000FFFFFFFF}[shift]
    m = _const(mask, lanes)
    return (v & m) + ((v >> _const(shift, lanes)) & m)


def _pairwise(arch: str, v, src_bits: int, lanes: int):
    """u64 lanes of ``src_bits`` fields -> fields of twice the width, adjacent pairs summed (NEON: one uaddlp)."""
    if lanes in (1, 2) and arch in ("aarch64", "armv7") and 32 // src_bits * lanes >= 2:  # no <1 x i64> in TIR
        name = "llvm.aarch64.neon.uaddlp" if arch == "aarch64" else "llvm.arm.neon.vpaddlu"
        return _u64(tirx.call_llvm_pure_intrin(_vt(2 * src_bits, 32 // src_bits * lanes), name,
                                               _view(v, src_bits, lanes)), lanes)
    return _fold(v, src_bits, lanes)


def _bits(expr) -> int:
    return tvm.DataType(str(expr.ty)).bits


def _narrow(v, call):
    """A u64 (x lanes) count as the call's type (u64 or u32)."""
    return v if _bits(call) == 64 else v.astype(_vt(_bits(call), _lanes(call)))


def _half(v, which: int):
    """Lanes [0, 2) or [2, 4) of a 4-lane vector."""
    return tirx.Shuffle([v], [tirx.const(2 * which, "int32"), tirx.const(2 * which + 1, "int32")])


def _sum_to_u32(arch: str, v, src_bits: int, lanes: int):
    """NEON: the u32 count of each u64 lane from its ``src_bits`` counters: u16 -> u32 by one uaddlp (vpaddl),
    then the two u32 halves of every lane added pairwise (addp), two accumulators' lanes into one q register."""
    def u32_pairs(half):  # one q register (2 u64 lanes) -> u32x4: 2 partial sums per lane
        if src_bits == 32:
            return _view(half, 32, 2)
        name = "llvm.aarch64.neon.uaddlp" if arch == "aarch64" else "llvm.arm.neon.vpaddlu"
        return tirx.call_llvm_pure_intrin("uint32x4", name, _view(half, 16, 2))

    if lanes == 2:
        a = u32_pairs(v)
        b = a
    else:
        a, b = u32_pairs(_half(v, 0)), u32_pairs(_half(v, 1))
    if arch == "aarch64":
        r = tirx.call_llvm_pure_intrin("uint32x4", "llvm.aarch64.neon.addp", a, b)
    else:  # armv7 has no 128-bit vpadd: even + odd lanes (vuzp + vadd)
        idx = (lambda start: [tirx.const(k, "int32") for k in range(start, 8, 2)])
        r = tirx.Shuffle([a, b], idx(0)) + tirx.Shuffle([a, b], idx(1))
    return r if lanes == 4 else _half(r, 0)


def _lower(kind: str, arch: str):
    def lower(call):
        lanes = _lanes(call)
        a = call.args[0]
        if kind == "nibcount":  # bit counts of bytes that hold only a low nibble: one table lookup (vpshufb)
            if arch == "x86" and lanes in (2, 4):
                name = "llvm.x86.avx2.pshuf.b" if lanes == 4 else "llvm.x86.ssse3.pshuf.b.128"
                ramp = tirx.Ramp(tirx.const(0, "uint8"), tirx.const(1, "uint8"), 8 * lanes)
                table = tirx.popcount(ramp & tirx.Broadcast(tirx.const(15, "uint8"), 8 * lanes))  # LLVM folds it
                return _u64(tirx.call_llvm_pure_intrin(_vt(8, 8 * lanes), name, table, _view(a, 8, lanes)), lanes)
            return _u64(tirx.popcount(_view(a, 8, lanes)), lanes)
        if kind == "padal":  # u16 counters + the pair sums of a word's byte counts (armv7: LLVM does not fuse them)
            b = call.args[1]
            if arch == "armv7" and lanes in (1, 2):
                return _u64(tirx.call_llvm_pure_intrin(_vt(16, 4 * lanes), "llvm.arm.neon.vpadalu", _view(a, 16, lanes),
                                                       _view(b, 8, lanes)), lanes)
            return _u64(_view(a, 16, lanes) + _view(_pairwise(arch, b, 8, lanes), 16, lanes), lanes)
        if kind == "pairs":
            return _pairwise(arch, a, 8, lanes)
        if kind == "quads":  # sum of 4 bytes per u32 field
            if arch == "aarch64" and lanes in (1, 2):  # udot(0, v, ones): LLVM folds the accumulating add into it
                ones = tirx.Broadcast(tirx.const(1, "uint8"), 8 * lanes)
                zero = tirx.Broadcast(tirx.const(0, "uint32"), 2 * lanes)
                return _u64(tirx.call_llvm_pure_intrin(_vt(32, 2 * lanes), "llvm.aarch64.neon.udot", zero,
                                                       _view(a, 8, lanes), ones), lanes)
            return _fold(_fold(a, 8, lanes), 16, lanes)
        if kind in ("add16", "add32"):
            bits = 16 if kind == "add16" else 32
            return _u64(_view(a, bits, lanes) + _view(call.args[1], bits, lanes), lanes)
        if kind == "sum8":
            if arch == "x86" and lanes in (2, 4) and _bits(call) == 64:
                name = "llvm.x86.avx2.psad.bw" if lanes == 4 else "llvm.x86.sse2.psad.bw"
                zero = tirx.Broadcast(tirx.const(0, "uint8"), 8 * lanes)
                return tirx.call_llvm_pure_intrin(_vt(64, lanes), name, _view(a, 8, lanes), zero)
            return _narrow(_pairwise(arch, _pairwise(arch, _pairwise(arch, a, 8, lanes), 16, lanes), 32, lanes), call)
        if kind in ("sum16", "sum32"):
            src = 16 if kind == "sum16" else 32
            if _bits(call) == 32 and arch in ("aarch64", "armv7") and lanes in (2, 4):
                return _sum_to_u32(arch, a, src, lanes)
            v = _pairwise(arch, _pairwise(arch, a, 16, lanes), 32, lanes) if src == 16 else _pairwise(arch, a, 32, lanes)
            return _narrow(v, call)
        raise ValueError(kind)

    return lower


def _op_name(kind: str, arch: str) -> str:
    return f"tvm_bnn.simd.{kind}.{arch}"


def _register_ops():
    for arch in _ARCHES:
        for kind in _KINDS:
            name = _op_name(kind, arch)
            register_op_attr(name, "TCallEffectKind", tirx.CallEffectKind.Pure.value)
            register_op_attr(name, "TVectorizable", True)
            # printed as T.<name> (e.g. in error messages or a schedule's script), not with a warning per call
            register_op_attr(name, "TScriptPrinterName", name.replace(".", "_"))
            tirx.op.register_intrin_lowering(name, target="llvm", f=_lower(kind, arch), level=10)


_register_ops()


def call_op(kind: str, arch: str, *args, dtype: str = "uint64"):
    return tirx.call_intrin(dtype, _op_name(kind, arch), *args)


def popcount_bytes(word):
    """uint64 -> uint64 whose 8 bytes are the bit counts of ``word``'s bytes (a byte view of the word)."""
    return tirx.reinterpret("uint64", tirx.popcount(tirx.reinterpret("uint8x8", word)))


NIBBLES = 0x0F0F0F0F0F0F0F0F


def nibble_plane(word, plane):
    """Plane 0 (low nibbles) or 1 (high nibbles) of a uint64 word, each in the low half of its byte."""
    return (word >> (tirx.const(4, "uint64") * plane.astype("uint64"))) & tirx.const(NIBBLES, "uint64")
