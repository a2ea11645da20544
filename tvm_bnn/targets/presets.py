"""Target presets: a name a user types -> the TVM target and the schedules that go with it.

"x86" is the host CPU as LLVM names it (``znver4`` on our machines). Never the generic ``{"kind": "llvm"}``: that CPU
has no popcnt instruction at all, and every popcount becomes a bit-twiddling sequence.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import tvm

from ..errors import UnknownTargetError


@dataclass(frozen=True)
class TargetSpec:
    name: str  # the preset name, or "custom"
    family: str  # "x86" (TVM runtime library), "c" (standalone C bundle, deploy/bundle.py) or "arm" (both:
    # a cross-compiled TVM runtime library to export, a bundle with LLVM-compiled NEON kernels to run here)
    target: tvm.target.Target
    board: str | None = None  # "c": the emulated board (targets/qemu.BOARDS), None: the host's gcc;
    # "arm": the qemu-user architecture (targets/qemu.LINUX_ARCHES)

    @property
    def popcount_isa(self) -> str:
        """Which popcount the code will use, for the report and the docs."""
        mcpu = str(self.target.attrs.get("mcpu", ""))
        mattr = [str(a) for a in self.target.attrs.get("mattr", [])]
        if "+avx512vpopcntdq" in mattr or mcpu in ("znver4", "znver5", "icelake-server", "icelake-client",
                                                      "sapphirerapids", "tigerlake", "graniterapids"):
            return "avx512-vpopcntdq"
        if self.family == "c":
            return "SWAR software popcount in C (Cortex-M has no popcount instruction)"
        if self.family == "arm":
            return "NEON cnt (vcnt.8 on armv7) with pairwise widening adds"
        if mcpu in ("", "generic", "x86-64") and not any(a in mattr for a in ("+popcnt", "+avx2")):
            return "none (generic CPU: software popcount)"
        return "popcnt"


def host_cpu() -> str:
    return str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())


def _cores() -> int:
    return int(os.environ.get("TVM_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))


def _x86(mcpu: str | None = None, mattr=None):
    cfg = {"kind": "llvm", "mcpu": mcpu or host_cpu(), "num-cores": _cores()}
    if mattr:
        cfg["mattr"] = list(mattr)
    return cfg


_PRESETS = {
    "x86": ("x86", lambda: _x86(), "the host x86-64 CPU (AVX-512 VPOPCNTDQ where it has it)"),
    "x86-avx512": ("x86", lambda: _x86("icelake-server"), "x86-64 with AVX-512 VPOPCNTDQ"),
    "x86-avx2": ("x86", lambda: _x86("haswell"), "x86-64 with AVX2 and POPCNT, no AVX-512"),
    "x86-popcnt": ("x86", lambda: _x86("nehalem"), "x86-64 with scalar POPCNT only"),
}


_C_PRESETS = {
    "cortex-m4": "bare-metal Cortex-M4 C bundle, verified on QEMU mps2-an386",
    "cortex-m7": "bare-metal Cortex-M7 C bundle, verified on QEMU mps2-an500",
    "cortex-m55": "bare-metal Cortex-M55 C bundle, verified on QEMU mps3-an547",
    "cortex-m3": "bare-metal Cortex-M3 C bundle, verified on QEMU mps2-an385",
    "cortex-m0": "bare-metal Cortex-M0 (ARMv6-M) C bundle, run on QEMU mps2-an385",
    "c": "portable C bundle (no OS, no malloc); cm(x) runs it with the host's gcc",
}


_ARM_PRESETS = {
    "aarch64": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
                 "num-cores": 4}, "aarch64", "64-bit ARM Linux with NEON (e.g. Raspberry Pi 4); cm(x) runs "
                                             "under qemu-aarch64"),
    "aarch64-dotprod": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                         "mattr": ["+neon", "+dotprod"], "num-cores": 4}, "aarch64",
                        "64-bit ARM Linux with NEON and the dot-product extension (Cortex-A76 and later)"),
    "armv7": ({"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mcpu": "cortex-a7",
               "mattr": ["+neon", "+vfp4"], "mfloat-abi": "hard", "num-cores": 4}, "armv7",
              "32-bit ARM Linux, armv7-a NEON, hard float (e.g. Raspberry Pi 2); cm(x) runs under qemu-arm"),
}


def known_targets() -> dict:
    return {**{name: desc for name, (_, _, desc) in _PRESETS.items()}, **_C_PRESETS,
            **{name: desc for name, (_, _, desc) in _ARM_PRESETS.items()}}


def _arm_arch(triple: str) -> str | None:
    if triple.startswith("aarch64"):
        return "aarch64"
    if triple.startswith(("armv7", "thumbv7a", "armv8")) and "eabihf" in triple:
        return "armv7"
    return None


def resolve_target(target) -> TargetSpec:
    """A preset name, a TVM target dict, or a tvm.target.Target -> TargetSpec."""
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, str):
        key = target.strip().lower()
        if key in _C_PRESETS:
            return TargetSpec(key, "c", tvm.target.Target({"kind": "c"}), None if key == "c" else key)
        if key in _ARM_PRESETS:
            cfg, arch, _ = _ARM_PRESETS[key]
            return TargetSpec(key, "arm", tvm.target.Target(cfg), arch)
        if key not in _PRESETS:
            choices = ", ".join(f"{n!r}" for n in list(_PRESETS) + list(_C_PRESETS) + list(_ARM_PRESETS))
            raise UnknownTargetError(f"target={target!r} is not a known target; choose one of {choices}, "
                                     "or pass a TVM target dict such as {'kind': 'llvm', 'mcpu': 'znver4'}")
        family, make, _ = _PRESETS[key]
        return TargetSpec(key, family, tvm.target.Target(make()))
    if isinstance(target, dict | tvm.target.Target):
        tgt = tvm.target.Target(target) if isinstance(target, dict) else target
        triple = str(tgt.attrs.get("mtriple", ""))
        if tgt.kind.name == "llvm" and _arm_arch(triple):
            if "num-cores" not in tgt.attrs:
                tgt = tvm.target.Target({**_as_dict(tgt), "num-cores": 4})
            return TargetSpec("custom", "arm", tgt, _arm_arch(triple))
        if tgt.kind.name == "llvm" and triple.startswith(("thumbv6m", "thumbv7m", "thumbv7em", "thumbv8m")):
            mcpu = str(tgt.attrs.get("mcpu", ""))
            if mcpu not in _C_PRESETS or mcpu == "c":
                raise UnknownTargetError(f"target={target!r}: a Cortex-M LLVM target needs mcpu= one of "
                                         f"{', '.join(k for k in _C_PRESETS if k != 'c')} (the emulated board)")
            # the C bundle with its kernels compiled by TVM's LLVM codegen instead of its C codegen
            return TargetSpec("custom", "c", tgt, mcpu)
        if tgt.kind.name != "llvm" or triple.startswith(("arm", "aarch64", "thumb")):
            raise UnknownTargetError(f"target={target!r}: LLVM targets for x86, aarch64-linux-gnu and "
                                     "armv7a-linux-gnueabihf are supported; for a Cortex-M use 'cortex-m4' etc.")
        if "num-cores" not in tgt.attrs:
            tgt = tvm.target.Target({**_x86(str(tgt.attrs.get("mcpu", "")) or None), **_as_dict(tgt)})
        return TargetSpec("custom", "x86", tgt)
    raise UnknownTargetError(f"target={target!r}: expected a target name such as 'x86', or a TVM target")


def _as_dict(tgt):
    return {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
            for k, v in tgt.export().items() if k in ("kind", "mcpu", "mattr", "mtriple", "mfloat-abi", "num-cores")}
