"""x86-64 CPU features: what compiled code needs, what this host has, and the ISA levels of the portable build.

Code compiled for a CPU feature the host lacks dies with SIGILL, which takes the whole Python process down. So a
model records the instruction-set features its code may use (:func:`required_features`, from the LLVM target) and
everything that runs x86 code here checks them first (:func:`check_runnable`), raising :class:`CPUFeatureError`
with the missing features and what to do.

**Host features** come from the kernel's view of CPUID, ``/proc/cpuinfo``'s ``flags`` (which also hides what the OS
does not enable, e.g. AVX-512 state under some hypervisors), mapped to LLVM's feature names by :data:`FEATURE_FLAGS`;
without ``/proc/cpuinfo`` (not Linux), LLVM's features of the host CPU name. Only the features in that table are
checked: the instruction-set extensions LLVM may use for arithmetic code (SSE to AVX-512, BMI, FMA, ...). Features
LLVM also lists that compiled kernels never use without an explicit intrinsic (SGX, PCONFIG, RDRAND, cache-control
and system instructions) are not, so ``icelake-server`` code still runs on a Zen 4.

**Levels** (:data:`LEVELS`, best first) are what ``x86-portable`` builds: one variant per level in one library, the
best one the host supports chosen at load time. The levels follow the x86-64 psABI micro-architecture levels
(x86-64, -v2, -v3, -v4) with AVX-512 VPOPCNTDQ added on top of v4 (the vector popcount is the point of the level).

**Forcing a level**: ``TVM_BNN_X86_LEVEL=avx2`` (``avx512``, ``avx2``, ``popcnt``, ``sse2``) makes this host behave as
a machine of that level: the host features lose what the levels above add (all of AVX-512 for ``avx2``; AVX and
everything built on it as well for ``popcnt``), the portable build picks that variant, and the ``x86`` target is
that level's generic CPU. It can only lower the level: asking for more than the host has is an error.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

import tvm

from ..errors import CPUFeatureError

LEVEL_ENV = "TVM_BNN_X86_LEVEL"

# LLVM feature name -> /proc/cpuinfo flag (Linux's name for the CPUID bit)
FEATURE_FLAGS = {
    "cmov": "cmov", "sse": "sse", "sse2": "sse2",
    "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "crc32": "sse4_2", "popcnt": "popcnt",
    "cx16": "cx16", "sahf": "lahf_lm", "sse4a": "sse4a",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2", "lzcnt": "abm",
    "movbe": "movbe", "fma4": "fma4", "xop": "xop", "tbm": "tbm", "adx": "adx",
    "aes": "aes", "pclmul": "pclmulqdq", "sha": "sha_ni", "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq",
    "avxvnni": "avx_vnni", "avxifma": "avx_ifma",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni", "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16", "avx512vp2intersect": "avx512_vp2intersect",
}
# need the AVX (VEX) state: gone when a forced level has no AVX
_NEEDS_AVX = ("avx", "fma", "f16c", "fma4", "xop", "vaes", "vpclmulqdq")


@dataclass(frozen=True)
class X86Level:
    name: str
    mcpu: str
    mattr: tuple
    description: str
    popcount: str  # what the binary kernels' popcount becomes

    def target(self, num_cores: int) -> tvm.target.Target:
        cfg = {"kind": "llvm", "mcpu": self.mcpu, "num-cores": num_cores}
        if self.mattr:
            cfg["mattr"] = list(self.mattr)
        return tvm.target.Target(cfg)

    @functools.cached_property
    def features(self) -> frozenset:
        """What code of this level needs (LLVM names), the same on any build machine."""
        cfg = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": self.mcpu}
        if self.mattr:
            cfg["mattr"] = list(self.mattr)
        return frozenset(required_features(tvm.target.Target(cfg)))


LEVELS = (
    # -prefer-256-bit: x86-64-v4's generic tuning splits 512-bit work in two (for Skylake-X clocks); measured on
    # Zen 4, the binary conv with bits output is ~15% slower with it, and at par with znver4 without it
    X86Level("avx512", "x86-64-v4", ("+avx512vpopcntdq", "-prefer-256-bit"), "x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) + "
             "AVX-512 VPOPCNTDQ: Ice Lake and later Intel, AMD Zen 4 and later", "vpopcntq (AVX-512 VPOPCNTDQ)"),
    X86Level("avx2", "x86-64-v3", (), "x86-64-v3 (AVX2, FMA, BMI2, POPCNT): Haswell and later Intel, AMD Zen 1-3",
             "vpshufb nibble tables (AVX2) and popcnt"),
    X86Level("popcnt", "x86-64-v2", (), "x86-64-v2 (SSE4.2, POPCNT): Nehalem and later, AMD Bulldozer", "popcnt"),
    X86Level("sse2", "x86-64", (), "x86-64 baseline (SSE2): every x86-64 CPU", "software popcount (SSE2)"),
)
LEVEL_NAMES = tuple(lv.name for lv in LEVELS)


def level(name: str) -> X86Level:
    for lv in LEVELS:
        if lv.name == name:
            return lv
    raise CPUFeatureError(f"x86 level {name!r} is not one of {', '.join(LEVEL_NAMES)}")


def required_features(target) -> tuple:
    """The instruction-set features (LLVM names, sorted) code compiled for ``target`` may use; () for a target
    that is not x86 (ARM, C)."""
    if target is None or target.kind.name != "llvm":
        return ()
    triple = str(target.attrs.get("mtriple", ""))
    if triple and not triple.startswith(("x86_64", "i386", "i686", "amd64")):
        return ()
    if not triple and platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    from tvm.target import codegen

    return tuple(sorted(f for f in codegen.llvm_get_cpu_features(target) if f in FEATURE_FLAGS))


def host_cpu_name() -> str:
    """The host CPU as LLVM names it (``znver4``, ``skylake``, ...)."""
    return str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's description."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def is_x86_host() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


@functools.lru_cache(maxsize=1)
def real_host_features() -> frozenset:
    """The checked features (LLVM names) this host has, not lowered by a forced level."""
    if not is_x86_host():
        return frozenset()
    flags = _cpuinfo().get("flags")
    if flags:
        have = set(flags.split())
        return frozenset(f for f, flag in FEATURE_FLAGS.items() if flag in have)
    from tvm.target import codegen

    cpu = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name()})
    return frozenset(f for f in codegen.llvm_get_cpu_features(cpu) if f in FEATURE_FLAGS)


def real_host_level() -> str | None:
    """The best level the CPU has (not lowered by a forced level); None on a host that is not x86-64."""
    have = real_host_features()
    return next((lv.name for lv in LEVELS if lv.features <= have), None)


def forced_level() -> str | None:
    """The level ``TVM_BNN_X86_LEVEL`` forces, checked against what the host really has (None: not forced)."""
    name = os.environ.get(LEVEL_ENV, "").strip().lower()
    if not name:
        return None
    if name not in LEVEL_NAMES:
        raise CPUFeatureError(f"{LEVEL_ENV}={name!r} is not an x86 level; use one of {', '.join(LEVEL_NAMES)}")
    missing = sorted(level(name).features - real_host_features())
    if missing:
        raise CPUFeatureError(f"{LEVEL_ENV}={name!r} asks for more than this CPU has ({cpu_model()}, level "
                              f"{real_host_level()}; missing {', '.join(missing)}): a forced level can only lower the "
                              f"level; unset {LEVEL_ENV} or choose a lower one")
    return name


def lower_features(have: frozenset, name: str) -> frozenset:
    """``have`` as a machine of level ``name`` would see it: without what the levels above it add (and, below
    ``avx2``, without everything that needs AVX; below ``avx512``, without any AVX-512 extension)."""
    keep = level(name).features
    above = set().union(*(lv.features for lv in LEVELS[:LEVEL_NAMES.index(name)])) - keep
    out = {f for f in have if f not in above}
    if "avx512f" not in keep:
        out = {f for f in out if not f.startswith("avx512")}
    if "avx" not in keep:
        out = {f for f in out if not f.startswith("avx") and f not in _NEEDS_AVX}
    return frozenset(out)


def host_features() -> frozenset:
    """The checked features (LLVM names) code may use here: the host's, lowered by a forced level."""
    forced = forced_level()
    have = real_host_features()
    return lower_features(have, forced) if forced else have


def host_level() -> str | None:
    """The best level this host runs (the forced one if forced); None on a host that is not x86-64."""
    forced = forced_level()
    return forced if forced else real_host_level()


def missing_features(required, have: frozenset | None = None) -> list:
    have = host_features() if have is None else have
    return sorted(f for f in required if f not in have)


def short_list(features, limit: int = 5) -> str:
    """'avx2, avx512f, ... (+7 more)': a feature list short enough for a one-line message."""
    features = list(features)
    head = ", ".join(features[:limit])
    return head + (f" (+{len(features) - limit} more)" if len(features) > limit else "")


def describe_host() -> str:
    """'AMD EPYC (LLVM: znver4), x86 level avx512' (+ ', forced by TVM_BNN_X86_LEVEL')."""
    if not is_x86_host():
        return f"{cpu_model()} (not x86-64)"
    forced = forced_level()
    text = f"{cpu_model()} (LLVM: {host_cpu_name()}), x86 level {host_level()}"
    if forced:
        text += f" (forced by {LEVEL_ENV}; the CPU has {real_host_level()})"
    return text


def check_runnable(required, what: str, action: str = "run") -> None:
    """Raise CPUFeatureError unless this host has every feature in ``required`` (what the code needs); ``what``
    names the code ("target 'x86-avx512'")."""
    missing = missing_features(required)
    if not missing:
        return
    if not is_x86_host():
        raise CPUFeatureError(f"cannot {action} {what}: it is x86-64 code and this host is {platform.machine()}")
    raise CPUFeatureError(
        f"cannot {action} {what} here: its code uses {', '.join(missing)}, which this CPU "
        f"({describe_host()}) does not have, and would die with an illegal instruction. Compile with "
        f"target='x86' for this host, or target='x86-portable' (one library for every x86-64 level, the best "
        f"variant chosen when it loads). Building for other CPUs is fine; running the code is what needs them.")


def choose_variant(variants, target_name: str, want: str | None = None) -> int:
    """Index of the variant to run here among ``variants`` ([(level or None, required features)], best first): the
    first whose features this host has; ``want``: that level only (it must not be above the host's level).
    Raises CPUFeatureError when none can run."""
    if want is not None:
        want = want.strip().lower()
        picks = [i for i, (name, _) in enumerate(variants) if name == want]
        if not picks:
            held = [name for name, _ in variants if name]
            raise CPUFeatureError(f"level={want!r}: target {target_name!r} holds "
                                  f"{'the levels ' + ', '.join(held) if held else 'no x86 levels'}")
    else:
        picks = list(range(len(variants)))
    for i in picks:
        if not missing_features(variants[i][1]):
            return i
    what = f"level {want!r} of target {target_name!r}" if want else f"target {target_name!r}"
    check_runnable(variants[picks[-1]][1], what)  # raises, naming what the lowest candidate lacks
    raise AssertionError("unreachable")
