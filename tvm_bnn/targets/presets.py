"""Target presets: a name a user types -> the TVM target and the schedules that go with it.

"x86" is the host CPU as LLVM names it (``znver4`` on our machines), minus any feature that CPU model has and this
host does not (a hypervisor may hide AVX-512), or the generic CPU of the level ``TVM_BNN_X86_LEVEL`` forces. Never
the generic ``{"kind": "llvm"}``: that CPU has no popcnt instruction at all, and every popcount becomes a
bit-twiddling sequence. "x86-portable" is every level of ``x86_host.LEVELS`` in one library (``levels``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import tvm

from ..errors import UnknownTargetError
from . import x86_host

@dataclass(frozen=True)
class TargetSpec:
    name: str  # the preset name, or "custom"
    family: str  # "x86" (TVM runtime library), "c" (standalone C bundle, deploy/bundle.py) or "arm" (both:
    # a cross-compiled TVM runtime library to export, a bundle with LLVM-compiled NEON kernels to run here)
    target: tvm.target.Target
    board: str | None = None  # "c": the emulated board (targets/qemu.BOARDS), None: the host's gcc;
    # "arm": the qemu-user architecture (targets/qemu.LINUX_ARCHES)
    levels: tuple = ()  # "x86-portable": the x86_host.LEVELS it builds, best first; ``target`` is then the level
    # this host runs (what tuning and profiling use)
    level: str | None = None  # one level of a portable build (``level_spec``)

    @property
    def required_features(self) -> tuple:
        """The x86 features the code may use (LLVM names; () for ARM and C): what running it here needs. For a
        portable build, those of its lowest level (each level's own are checked when one is chosen)."""
        if self.levels:
            return tuple(sorted(x86_host.level(self.levels[-1]).features))
        return x86_host.required_features(self.target) if self.family == "x86" else ()

    def level_spec(self, name: str) -> TargetSpec:
        """The spec of one level of a portable build."""
        return TargetSpec(f"{self.name}:{name}", "x86", x86_host.level(name).target(_num_cores(self.target)),
                          level=name)

    @property
    def popcount_isa(self) -> str:
        """Which popcount the code will use, for the report and the docs."""
        if self.family == "c":
            return "SWAR software popcount in C (Cortex-M has no popcount instruction)"
        if self.family == "arm":
            return "NEON cnt (vcnt.8 on armv7) with pairwise widening adds"
        if self.levels:
            return "per level: " + ", ".join(f"{n} {x86_host.level(n).popcount}" for n in self.levels)
        features = set(self.required_features)
        if "avx512vpopcntdq" in features:
            return "avx512-vpopcntdq"
        if "avx2" in features:
            return "avx2 (vpshufb nibble tables) and popcnt"
        if "popcnt" in features:
            return "popcnt"
        return "none (generic CPU: software popcount)"


def host_cpu() -> str:
    return x86_host.host_cpu_name()


def _cores() -> int:
    return int(os.environ.get("TVM_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))


def _num_cores(target) -> int:
    return int(target.attrs.get("num-cores", 0)) or _cores()


def _x86(mcpu: str | None = None, mattr=None):
    cfg = {"kind": "llvm", "mcpu": mcpu or host_cpu(), "num-cores": _cores()}
    if mattr:
        cfg["mattr"] = list(mattr)
    return cfg


def _host_x86():
    """The host CPU, without the features its model has and this host does not (so "x86" always runs here); under
    TVM_BNN_X86_LEVEL, the generic CPU of that level."""
    forced = x86_host.forced_level()
    if forced:
        lv = x86_host.level(forced)
        return _x86(lv.mcpu, lv.mattr)
    cpu = host_cpu()
    hidden = x86_host.missing_features(x86_host.required_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu})),
                                       x86_host.real_host_features()) if x86_host.is_x86_host() else []
    return _x86(cpu, [f"-{f}" for f in hidden])


def _level(name: str):
    lv = x86_host.level(name)
    return lambda: _x86(lv.mcpu, lv.mattr)


def _portable():
    best = x86_host.host_level() if x86_host.is_x86_host() else None
    return _level(best or x86_host.LEVEL_NAMES[-1])()


_PRESETS = {
    "x86": ("x86", _host_x86, "the host x86-64 CPU (AVX-512 VPOPCNTDQ where it has it)"),
    "x86-portable": ("x86", _portable, "every x86-64 CPU: one library with a variant per ISA level (AVX-512 "
                                       "VPOPCNTDQ, AVX2, POPCNT, SSE2), the best one chosen when it loads"),
    "x86-avx512": ("x86", lambda: _x86("icelake-server"), "x86-64 with AVX-512 VPOPCNTDQ"),
    "x86-avx2": ("x86", lambda: _x86("haswell"), "x86-64 with AVX2 and POPCNT, no AVX-512"),
    "x86-popcnt": ("x86", lambda: _x86("nehalem"), "x86-64 with scalar POPCNT only"),
    "x86-sse2": ("x86", _level("sse2"), "any x86-64 CPU (SSE2, no popcount instruction)"),
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
        levels = x86_host.LEVEL_NAMES if key == "x86-portable" else ()
        return TargetSpec(key, family, tvm.target.Target(make()), levels=levels)
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
