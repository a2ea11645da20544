"""CMSIS-NN int8 against tvm_bnn's binary C bundle on the same emulated Cortex-M board, instructions counted the
same way (issue 20: the per-shape baseline of item 1, item 2).

    python bench/cmsis_nn.py [--cmsis-nn PATH] [--board cortex-m4] [--part 1 2] [--memcpy newlib|startup] [--low-bit]
                             [--shapes 16x16x64 ...] [--calib 300] [--eval 500] [--board-inputs 8]
                             [--train-epochs 25]

Runtime (2 cores, both busy with other work): both parts 2.5-4.5 minutes, most of it tvm_bnn compiling the CNN;
``--part 1`` alone about 10 s on any board (QEMU runs even the M0's 920M instructions for 16x16x256 in seconds),
plus a few seconds the first time CMSIS-NN is compiled for a board.

``--cmsis-nn`` is a CMSIS-NN source tree (``git clone https://github.com/ARM-software/CMSIS-NN``); the default is
``../shared/third_party/cmsis-nn`` next to the repository. Nothing of CMSIS-NN is in this repository: its
``Source/`` is compiled from that path at bench time (into ``~/.cache/tvm_bnn/cmsis_nn_bench/``, reused while the
tree and the flags are unchanged). ``--board``: cortex-m4 (default), cortex-m7, cortex-m55, cortex-m3, cortex-m0,
the boards of ``tvm_bnn.targets.qemu.BOARDS``.

How it is measured. Every firmware, CMSIS-NN's and tvm_bnn's, is linked by ``tvm_bnn.targets.qemu.build_firmware``
(tvm_bnn's startup ``deploy/startup/startup_cortexm.c``, compiled -O2 for both, its linker script, the board's
``-mcpu`` flags) and run by ``qemu.run_firmware`` on the same QEMU machine (mps2-an386 for M4, mps2-an500 M7,
mps3-an547 M55, mps2-an385 M3/M0) under ``-icount``; instructions = SysTick ticks of the ``tvm_bnn_bm_begin()/end()``
regions, minus the cost of an empty region, converted as ``qemu.BoardRun.instructions`` does. Executed
instructions, not cycles (an M55 MVE instruction takes 2 beats, an M4 load 2 cycles, ...).

CMSIS-NN is compiled as its README recommends: ``arm-none-eabi-gcc -Ofast`` plus the board's flags (for the M4:
``-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16``), without ``-ffreestanding`` (which the README says
to avoid: it turns off the builtin memcpy/memset that CMSIS-NN leans on); ``-DOPTIONAL_RESTRICT_KEYWORD=__restrict``
on the M7, as the README recommends there. This bench's own C (the mains, the generated twin, ``twin_ops.c``) gets
the same flags. The compiler's feature macros pick CMSIS-NN's path: DSP (M4, M7: SMLAD), MVE (M55: Helium), pure C
(M3, M0). CMSIS-NN's im2col calls memcpy/memset; tvm_bnn's startup defines them as weak C loops, so by default the
firmware links newlib's ``memcpy``/``memset`` objects for the board's multilib (what an application linked with
newlib gets); ``--memcpy startup`` keeps the startup's loops instead (CMSIS-NN's conv at 16x16x64 on the M4 then
counts 2.9% more).

Part 1, per-shape kernels: a binary 3x3 conv, stride 1, pad 1, Cout = Cin, batch 1, for HxWxC 16x16x64,
32x32x32, 8x8x128, 16x16x256 (``--shapes``). CMSIS-NN: one ``arm_convolve_wrapper_s8`` call (NHWC int8, per-channel
multipliers/shifts, input offset 3, output offset -5; pseudo-random data; scratch buffer of
``arm_convolve_wrapper_s8_get_buffer_size``), counted alone (``bench/cmsis_nn/conv_main.c``). tvm_bnn: the
one-layer model ``F.conv2d(torch.where(x >= 0, 1., -1.), torch.sign(w), padding=1)`` compiled with
``tvm_bnn.compile(model, board, example_inputs=(x,))``; ``cm.bundle.run_board(x, board, per_call=True)`` counts each
kernel call of the bundle (bit-packing of the float input, then the binary conv, which writes float outputs).
Printed: both counts, their ratio, MACs (H*W*C*C*9) per instruction, the bit-packing kernel separately.

Part 2, whole models: the digits model (``examples/digits_demo.make_model``) and ``SmallBinaryCNN`` of
``bench/cortexm.py``, built as in that bench (seed 0, ``randomize_batchnorm_``), compiled by tvm_bnn (``cm.stats``
after one inference), against an int8 twin of the same architecture as TFLite Micro would run it with CMSIS-NN:

* BatchNorm folded into the preceding conv / linear layer; weights (the binary layers' +-1, or +-alpha, like any
  float weights) quantized int8 per output channel, symmetric (scale max|w|/127); biases int32 at
  input scale x weight scale; per-channel requantization multipliers/shifts as TFLite's ``QuantizeMultiplier``;
* activations int8 per tensor, asymmetric, the ranges calibrated as TFLite's converter does (min/max over
  ``--calib`` sample inputs: the digits images for the digits model, standard normal inputs for the CNN);
* kernels: ``arm_convolve_wrapper_s8`` (3x3, pad 1), ``arm_max_pool_s8`` (2x2), ``arm_fully_connected_per_channel_s8``
  (the per-channel variant of ``arm_fully_connected_s8``: the folded BatchNorm scales each output row);
* the binarizer of a binary layer's input (x >= 0 -> +1) has no CMSIS-NN kernel: ``bench/cmsis_nn/twin_ops.c`` runs
  it in place on the int8 tensor (q >= zero point -> 1, else -1; the next layer's input then has scale 1 and zero
  point 0), 4 bytes per step with the DSP extension; its share of the instructions is printed;
* straight-line generated C (``twin_model.c``: one call per layer, parameters in ``static const`` structs, no
  interpreter), the weights as ``const`` arrays (flash); all intermediate tensors and the scratch buffers in one
  static arena planned as TFLite Micro's GreedyMemoryPlanner does (largest block first, liveness-based reuse; what
  tvm_bnn's own first-fit planner ``deploy.arena.plan_arena`` would need for the same blocks is printed too), the
  model's input and output in the caller's buffers, as in tvm_bnn's bundle. The input is given int8 (quantized on
  the host) and the int8 logits are dequantized on the host: tvm_bnn's bundle takes and returns floats.

Printed side by side: instructions per inference (the twin's is the first of ``--board-inputs`` inferences, which
all count the same), weight flash (int8 weights + int32 biases + multipliers + shifts against
``cm.stats.flash_weight_bytes``), code flash and RAM. Code flash is given two ways: ``.text`` minus weights and test inputs as
``cm.stats.flash_code_bytes`` computes it (which includes the startup code), and the model's code alone (minus the
``.text`` of the same startup with an empty main). RAM: the twin's arena (activations + scratch, + the kernel sums
MVE's fully connected keeps) against ``cm.stats.ram_arena_bytes``. Faithfulness of the twin: its int8 logits
dequantized against the float PyTorch model, top-1 agreement and relative L2 error, on the ``--board-inputs``
inputs run on the board and on ``--eval`` held-out inputs through a numpy model of the same integer arithmetic
(CMSIS-NN's rounding), which is checked bit-exact against the board's outputs; and, per binarizer, the fraction of
its outputs whose sign differs from the float model's. The bench's models are untrained with random BatchNorm
statistics: a flip near zero in the first binarizer (int8 rounding of the float stem's output) spreads through the
binary layers, so their twins agree with PyTorch on top-1 for only ~30% of inputs. The twin of a trained digits
model (``--train-epochs``, ``digits_demo.train``) is checked the same way, with the accuracy of both on the
held-out digits: that is where the twin's faithfulness shows (98.9% top-1 agreement, 98.3% vs 97.8% accuracy on
the M4). Its instruction count is the same as the untrained twin's: neither library's kernels depend on weights.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "examples"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tvm_bnn  # noqa: E402
from tvm_bnn import nn as bnn  # noqa: E402
from tvm_bnn.deploy.arena import ArenaPlan, Block, aligned, plan_arena  # noqa: E402
from tvm_bnn.deploy.toolchain import CFLAGS_EXTRA  # noqa: E402
from tvm_bnn.targets import qemu  # noqa: E402
from tvm_bnn.targets.c_codegen import c_array  # noqa: E402

C_DIR = BENCH / "cmsis_nn"
DEFAULT_CMSIS_NN = REPO.parent / "shared" / "third_party" / "cmsis-nn"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvm_bnn" / "cmsis_nn_bench"
CMSIS_DIRS = ("ConvolutionFunctions", "FullyConnectedFunctions", "NNSupportFunctions", "PoolingFunctions")
SHAPES = ((16, 16, 64), (32, 32, 32), (8, 8, 128), (16, 16, 256))
# a board whose RAM cannot hold a large filter takes it from memory QEMU maps outside the linker script's RAM
# (mps3-an547: DDR at 0x60000000); the counts do not depend on where the bytes are
FILTER_ADDR = {"cortex-m55": 0x60000000}
BUNDLE_FLAGS = ("-O2", "-ffreestanding", *CFLAGS_EXTRA)  # what cm.bundle.run_board builds with (qemu defaults)


# ---------------------------------------------------------------------------------------------------------------
# CMSIS-NN: the source tree, the library for a board, the firmware
# ---------------------------------------------------------------------------------------------------------------

def cmsis_nn_tree(path) -> Path:
    """The CMSIS-NN source tree at ``path`` (default ``../shared/third_party/cmsis-nn``), checked."""
    root = Path(path) if path else DEFAULT_CMSIS_NN
    if not (root / "Include" / "arm_nnfunctions.h").is_file() or not (root / "Source").is_dir():
        where = "no --cmsis-nn given and the default " if not path else ""
        raise SystemExit(f"{where}CMSIS-NN source tree not found at {root}: clone it with\n"
                         f"  git clone https://github.com/ARM-software/CMSIS-NN {root}\n"
                         f"and pass --cmsis-nn {root} (a tree with Include/arm_nnfunctions.h and Source/)")
    return root.resolve()


def cmsis_nn_version(root: Path) -> str:
    if (root / ".git").exists():
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        if rev:
            return f"commit {rev}"
    origin = root / "ORIGIN.md"
    if origin.is_file():
        for word in origin.read_text().split():
            if len(word) == 40 and all(c in "0123456789abcdef" for c in word):
                return f"commit {word[:12]} (ORIGIN.md)"
    return "version unknown"


def lib_flags(board: str) -> list:
    flags = [*qemu.board(board).cflags, "-Ofast", "-std=gnu11", "-ffunction-sections", "-fdata-sections"]
    if board == "cortex-m7":
        flags.append("-DOPTIONAL_RESTRICT_KEYWORD=__restrict")  # CMSIS-NN's README: recommended for the M7
    return flags


def cmsis_path(board: str) -> str:
    """Which CMSIS-NN implementation the board's flags select (the compiler's ACLE feature macros)."""
    cc = qemu.require_tool("arm-none-eabi-gcc")
    out = subprocess.run([cc, *qemu.board(board).cflags, "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True,
                         text=True).stdout
    mve = re.search(r"^#define __ARM_FEATURE_MVE (\d+)", out, re.M)
    if mve and int(mve.group(1)) & 1:
        return "MVE (Helium)"
    if re.search(r"^#define __ARM_FEATURE_DSP 1$", out, re.M):
        return "DSP (SIMD32)"
    return "pure C"


@dataclass
class CmsisLib:
    board: str
    root: Path
    archive: bytes
    flags: list
    memcpy: dict = field(default_factory=dict)  # object name -> bytes (newlib's memcpy/memset), or empty

    def objects(self) -> dict:
        return {"libcmsisnn.a": self.archive, **self.memcpy}


def build_cmsis_lib(root: Path, board: str, memcpy: str = "newlib", jobs: int | None = None) -> CmsisLib:
    """Compile CMSIS-NN's int8 sources (``CMSIS_DIRS`` minus the float files) for ``board`` into an archive,
    cached by the hash of the flags, the compiler and the sources' sizes and times."""
    cc = qemu.require_tool("arm-none-eabi-gcc")
    ar = qemu.require_tool("arm-none-eabi-ar")
    flags = lib_flags(board)
    srcs = sorted(p for d in CMSIS_DIRS for p in (root / "Source" / d).glob("*.c")
                  if not p.stem.endswith(("_f16", "_f32", "_flt")))
    h = hashlib.sha1(" ".join([cc, *flags, str(root)]).encode())
    h.update(subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.encode())
    for p in srcs + sorted((root / "Include").rglob("*.h")):
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = CACHE / f"{board}-{h.hexdigest()[:16]}"
    archive = out / "libcmsisnn.a"
    if not archive.is_file():
        tmp = Path(tempfile.mkdtemp(prefix="cmsisnn_build_"))

        def compile_one(src: Path):
            obj = tmp / (src.stem + ".o")
            cmd = [cc, *flags, f"-I{root / 'Include'}", "-c", str(src), "-o", str(obj)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"CMSIS-NN build failed:\n{' '.join(cmd)}\n{proc.stderr}")
            return obj

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            objs = list(pool.map(compile_one, srcs))
        subprocess.run([ar, "rcs", str(tmp / "libcmsisnn.a"), *map(str, objs)], check=True)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / "libcmsisnn.a", archive)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"  (compiled {len(srcs)} CMSIS-NN sources for {board} in {time.time() - t0:.0f} s -> {archive})")
    objs = newlib_memory_routines(board) if memcpy == "newlib" else {}
    return CmsisLib(board, root, archive.read_bytes(), flags, objs)


def newlib_memory_routines(board: str) -> dict:
    """newlib's memcpy and memset objects for the board's multilib: they override the startup's weak C loops."""
    cc = qemu.require_tool("arm-none-eabi-gcc")
    ar = qemu.require_tool("arm-none-eabi-ar")
    libc = subprocess.run([cc, *qemu.board(board).cflags, "-print-file-name=libc.a"], capture_output=True,
                          text=True).stdout.strip()
    if not os.path.isfile(libc):
        raise SystemExit(f"newlib's libc.a not found for {board} ({libc!r}): install libnewlib-arm-none-eabi, "
                         "or pass --memcpy startup")
    nm = qemu.require_tool("arm-none-eabi-nm")
    members = {}  # symbol -> the archive member defining it (lib_a-memcpy.o; lib_a-memcpy-stub.o on v6-m)
    for line in subprocess.run([nm, "-A", "--defined-only", libc], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "T" and parts[2] in ("memcpy", "memset"):
            members.setdefault(parts[2], parts[0].split(":")[-2])  # libc.a:member:address
    if set(members) != {"memcpy", "memset"}:
        raise SystemExit(f"no memcpy/memset in {libc}; pass --memcpy startup")
    tmp = Path(tempfile.mkdtemp(prefix="newlib_mem_"))
    subprocess.run([ar, "x", libc, *members.values()], cwd=tmp, check=True)
    objs = {f"newlib_{sym}.o": (tmp / m).read_bytes() for sym, m in members.items()}
    shutil.rmtree(tmp, ignore_errors=True)
    return objs


def run_cmsis_firmware(lib: CmsisLib, sources: dict, defines=(), workdir=None, timeout=900):
    """Compile the ``.c`` of ``sources`` with CMSIS-NN's flags (-Ofast, the board's), link them with the CMSIS-NN
    archive (and newlib's memcpy/memset) through tvm_bnn's firmware builder (its startup, compiled -O2 as for the
    bundles, and linker script), and run the firmware on the board (tvm_bnn's QEMU runner).

    The startup is not compiled with -Ofast: on the M55 gcc then vectorises its .data copy loop with MVE
    instructions, which fault (NOCP) before the reset handler has enabled the FPU/MVE."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="cmsisnn_fw_"))
    workdir.mkdir(parents=True, exist_ok=True)
    cc = qemu.require_tool("arm-none-eabi-gcc")
    headers = {k: v for k, v in sources.items() if not k.endswith(".c")}
    for name, text in headers.items():
        (workdir / name).write_text(text)
    objects = {}
    for name, text in sources.items():
        if not name.endswith(".c"):
            continue
        (workdir / name).write_text(text)
        obj = workdir / (name[:-2] + ".o")
        cmd = [cc, *lib.flags, "-Wall", "-Werror", *[f"-D{d}" for d in defines], f"-I{lib.root / 'Include'}",
               f"-I{C_DIR}", f"-I{qemu.STARTUP_DIR}", f"-I{workdir}", "-c", str(workdir / name), "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"build failed:\n{' '.join(cmd)}\n{proc.stderr}")
        objects[name[:-2] + ".o"] = obj.read_bytes()
    elf = qemu.build_firmware(headers, lib.board, workdir, objects={**objects, **lib.objects()})
    if lib.memcpy:  # newlib's must have replaced the startup's weak definitions
        syms = subprocess.run([qemu.require_tool("arm-none-eabi-nm"), str(elf)], capture_output=True, text=True).stdout
        weak = [f for f in ("memcpy", "memset") if re.search(rf"^\S+ W {f}$", syms, re.M)]
        if weak:
            raise RuntimeError(f"the firmware kept the startup's {', '.join(weak)}, not newlib's")
    return qemu.run_firmware(elf, lib.board, timeout=timeout)


def baseline_text(board: str) -> int:
    """.text of the startup with an empty counted main: what both firmwares carry besides the model."""
    main = '#include "tvm_bnn_bm.h"\nint main(void) {\n  tvm_bnn_bm_begin();\n  tvm_bnn_bm_end();\n' \
           '  tvm_bnn_bm_output("", 0);\n  return 0;\n}\n'
    tmp = tempfile.mkdtemp(prefix="cmsisnn_base_")
    try:
        elf = qemu.build_firmware({"main.c": main}, board, tmp)
        return qemu.elf_sizes(elf).get("text", 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Part 1: per-shape kernels
# ---------------------------------------------------------------------------------------------------------------

class OneBinaryConv(torch.nn.Module):
    """The one-layer model of part 1: ``bits`` "w1a1" (sign activations, sign weights), or the few-bit variants
    (issue 21): "w1a2" 3-level activations ``clamp(round(x), -1, 1)`` (Brevitas' 2-bit narrow range: two bit
    planes) with sign weights; "w2a2" the same activations with ternary weights (two weight planes, which the C
    bundle runs as one ternary kernel per activation plane: 2 kernels); "w2a2-dorefa" DoReFa's 4-level
    ``round(clamp(x, 0, 1) * 3) / 3`` (two planes, binary code) with ternary weights (2 ternary kernels)."""

    def __init__(self, c, bits="w1a1"):
        super().__init__()
        self.bits = bits
        self.w = torch.nn.Parameter(torch.randn(c, c, 3, 3))

    def forward(self, x):
        if self.bits == "w1a1":
            a = torch.where(x >= 0, 1., -1.)
        elif self.bits == "w2a2-dorefa":
            a = torch.round(torch.clamp(x, 0, 1) * 3) / 3
        else:
            a = torch.clamp(torch.round(x), -1, 1)
        w = torch.sign(self.w)
        if self.bits.startswith("w2"):
            w = torch.where(self.w.abs() < 0.5, 0.0, w)  # ternary: about 38% zeros
        return F.conv2d(a, w, padding=1)


def cmsis_conv_count(lib: CmsisLib, h: int, w: int, c: int) -> tuple:
    """(instructions of one arm_convolve_wrapper_s8 call, scratch bytes) for HxWxC."""
    scratch_max = 64 * c + 1024
    defines = [f"CONV_H={h}", f"CONV_W={w}", f"CONV_C={c}", f"SCRATCH_MAX={scratch_max}"]
    b = qemu.board(lib.board)
    need = 2 * h * w * c + 9 * c * c + scratch_max + (64 << 10)  # tensors + filter + scratch + stack and the rest
    if need > b.ram_kb * 1024:
        if lib.board not in FILTER_ADDR:
            raise SystemExit(f"{h}x{w}x{c} does not fit in the RAM of {lib.board}")
        defines.append(f"FILTER_ADDR=0x{FILTER_ADDR[lib.board]:08x}u")
    tmp = tempfile.mkdtemp(prefix="cmsisnn_conv_")
    try:
        run = run_cmsis_firmware(lib, {"conv_main.c": (C_DIR / "conv_main.c").read_text()}, defines, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    scratch, status, _checksum = struct.unpack("<iiI", run.output[:12])
    if status != 0:
        raise RuntimeError(f"arm_convolve_wrapper_s8 returned {status} for {h}x{w}x{c} on {lib.board}")
    if run.regions != 1:
        raise RuntimeError(f"expected one counted region, got {run.regions}")
    return run.instructions, scratch


def tvm_bnn_conv_count(board: str, h: int, w: int, c: int, bits: str = "w1a1") -> dict:
    """Instructions of each kernel call of tvm_bnn's bundle for the one-layer binary conv (few-bit: one binary conv
    per activation plane x weight plane, summed: "conv" is their total, "convs" their number)."""
    torch.manual_seed(0)
    model = OneBinaryConv(c, bits).eval()
    x = torch.randn(1, c, h, w)
    cm = tvm_bnn.compile(model, board, example_inputs=(x,), progress=False)
    y, per = cm.bundle.run_board(x.numpy(), board, per_call=True)
    with torch.no_grad():
        err = float(np.abs(y - model(x).numpy()).max())
    conv = [v for k, v in per if "conv" in k]
    pack = [v for k, v in per if "pack" in k]
    other = [(k, v) for k, v in per if "conv" not in k and "pack" not in k]
    if not conv or (bits == "w1a1" and len(conv) != 1):
        raise RuntimeError(f"expected {'one binary conv call' if bits == 'w1a1' else 'binary conv calls'}, got {per}")
    return {"conv": sum(conv), "convs": len(conv), "bitpack": sum(pack), "other": other, "calls": per, "err": err,
            "bits": [r.bits for r in cm.report]}


def part1_low_bit(lib: CmsisLib, shapes, variants) -> None:
    """The few-bit variants of the part 1 conv (OneBinaryConv ``bits``) against the same CMSIS-NN int8 conv."""
    board = lib.board
    print(f"\n== Part 1b: few-bit 3x3 conv (stride 1, pad 1, Cout = Cin) on {board}: CMSIS-NN "
          f"arm_convolve_wrapper_s8 (int8) vs tvm_bnn's plane kernels (all calls: packing, convs, sums) ==")
    print(f"{'H x W x C':>12} {'variant':>12} {'bits':>5} {'convs':>5} {'CMSIS-NN s8':>14} {'tvm_bnn all':>13} "
          f"{'ratio':>6} {'convs only':>11} {'ratio':>6}")
    for h, w, c in shapes:
        s8, _ = cmsis_conv_count(lib, h, w, c)
        for bits in variants:
            tb = tvm_bnn_conv_count(board, h, w, c, bits)
            total = tb["conv"] + tb["bitpack"] + sum(v for _, v in tb["other"])
            print(f"{f'{h}x{w}x{c}':>12} {bits:>12} {tb['bits'][0]:>5} {tb['convs']:>5} {s8:>14,.0f} {total:>13,.0f} "
                  f"{s8 / total:>5.2f}x {tb['conv']:>11,.0f} {s8 / tb['conv']:>5.2f}x"
                  + (f"  (|bundle - torch| {tb['err']:.0e})" if tb["err"] else ""))
    print("  ratio = CMSIS-NN / tvm_bnn (> 1: tvm_bnn executes fewer instructions). A few-bit layer is one binary conv "
          "per (activation plane, weight plane),\n  a ternary filter's two planes one ternary kernel; the planes "
          "packed in one pass, their outputs summed in float.")


def part1(lib: CmsisLib, shapes) -> None:
    board = lib.board
    print(f"\n== Part 1: binary 3x3 conv (stride 1, pad 1, Cout = Cin) on {board}: CMSIS-NN "
          f"arm_convolve_wrapper_s8 (int8) vs tvm_bnn's binary conv kernel ==")
    print(f"{'H x W x C':>12} {'MACs':>12} {'CMSIS-NN s8':>14} {'tvm_bnn bin':>13} {'ratio':>6} "
          f"{'MAC/ins s8':>10} {'bitMAC/ins':>10} {'bitpack':>9} {'ratio w/ pack':>13} {'scratch':>8}")
    for h, w, c in shapes:
        macs = h * w * c * c * 9
        s8, scratch = cmsis_conv_count(lib, h, w, c)
        tb = tvm_bnn_conv_count(board, h, w, c)
        both = tb["conv"] + tb["bitpack"] + sum(v for _, v in tb["other"])
        print(f"{f'{h}x{w}x{c}':>12} {macs:>12,} {s8:>14,.0f} {tb['conv']:>13,.0f} {s8 / tb['conv']:>5.2f}x "
              f"{macs / s8:>10.2f} {macs / tb['conv']:>10.2f} {tb['bitpack']:>9,.0f} {s8 / both:>12.2f}x "
              f"{scratch:>7,}B" + (f"  (|bundle - torch| {tb['err']:.0e})" if tb["err"] else ""))
        if tb["other"]:
            print(f"{'':>12} tvm_bnn's other calls: {tb['other']}")
    print("  ratio = CMSIS-NN / tvm_bnn binary conv kernel; 'ratio w/ pack' counts tvm_bnn's bit-packing of the "
          "float input too.\n  MAC/ins: int8 MACs per instruction (CMSIS-NN), binary MACs per instruction (tvm_bnn).")


# ---------------------------------------------------------------------------------------------------------------
# Part 2: whole models, the int8 twin
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Op:
    kind: str  # conv, linear, maxpool, flatten
    module: object = None
    bn: object = None
    sign_input: bool = False  # the layer binarizes its input (x >= 0 -> +1)


def ops_of(model) -> list:
    """The model as a chain of ops (BatchNorm attached to the layer before it)."""
    from cortexm import SmallBinaryCNN

    if isinstance(model, SmallBinaryCNN):
        m = model
        mods = [m.stem, m.bn0, m.c1, m.bn1, m.c2, m.bn2, torch.nn.MaxPool2d(2), m.c3, m.bn3, torch.nn.MaxPool2d(2),
                torch.nn.Flatten(), m.fc]
    elif isinstance(model, torch.nn.Sequential):
        mods = list(model)
    else:
        raise TypeError(f"no op chain for {type(model).__name__}")
    ops = []
    for mod in mods:
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            if not ops or ops[-1].kind not in ("conv", "linear") or ops[-1].bn is not None:
                raise TypeError("a BatchNorm that does not follow a conv or linear layer")
            ops[-1].bn = mod
        elif isinstance(mod, torch.nn.Conv2d):
            if mod.kernel_size != (3, 3) or mod.stride != (1, 1) or mod.padding != (1, 1) or mod.groups != 1:
                raise TypeError("only 3x3 stride-1 pad-1 convs")
            ops.append(Op("conv", mod, sign_input=getattr(mod, "binarize_input", False)
                          and isinstance(mod, bnn.BinaryConv2d)))
        elif isinstance(mod, torch.nn.Linear):
            ops.append(Op("linear", mod, sign_input=isinstance(mod, bnn.BinaryLinear) and mod.binarize_input))
        elif isinstance(mod, torch.nn.MaxPool2d):
            if mod.kernel_size not in (2, (2, 2)) or mod.stride not in (2, (2, 2)):
                raise TypeError("only 2x2 stride-2 max pooling")
            ops.append(Op("maxpool"))
        elif isinstance(mod, torch.nn.Flatten):
            ops.append(Op("flatten"))
        else:
            raise TypeError(f"no twin for {type(mod).__name__}")
    return ops


def effective_weight(mod) -> torch.Tensor:
    """The float weight the layer multiplies with (the binary layers' sign(w), times alpha when XNOR-scaled)."""
    if isinstance(mod, bnn.BinaryConv2d):
        return bnn._scaled(mod.weight, mod.scale, (1, 2, 3)).detach()
    if isinstance(mod, bnn.BinaryLinear):
        return bnn._scaled(mod.weight, mod.scale, (1,)).detach()
    return mod.weight.detach()


def folded(op: Op) -> tuple:
    """(weight, bias) with the BatchNorm folded in, float64."""
    w = effective_weight(op.module).double()
    b = op.module.bias.detach().double() if op.module.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if op.bn is not None:
        bn = op.bn
        g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * g.reshape(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean.double()) * g + bn.bias.detach().double()
    return w, b


def float_chain(ops, x: torch.Tensor, record=None, signs=None) -> torch.Tensor:
    """The folded float model (NCHW, float64); ``record``: a list receiving each quantized tensor point; ``signs``:
    a list receiving the input of each binarizer (NHWC, flattened per sample)."""
    y = x.double()
    unflat = None  # the 4-d tensor a flatten just flattened: the twin's order of its elements is NHWC
    if record is not None:
        record.append(y)
    for op in ops:
        if op.sign_input:
            if signs is not None:
                v = unflat if unflat is not None else y
                signs.append((v.permute(0, 2, 3, 1) if v.dim() == 4 else v).reshape(v.shape[0], -1).numpy())
            y = torch.where(y >= 0, 1.0, -1.0).double()
        unflat = y if op.kind == "flatten" and y.dim() == 4 else None
        if op.kind == "conv":
            w, b = folded(op)
            y = F.conv2d(y, w, b, padding=1)
        elif op.kind == "linear":
            w, b = folded(op)
            y = F.linear(y, w, b)
        elif op.kind == "maxpool":
            y = F.max_pool2d(y, 2)
            continue  # the pool keeps its input's quantization
        elif op.kind == "flatten":
            y = y.flatten(1)
            continue
        if record is not None:
            record.append(y)
    return y


def act_qparams(lo: float, hi: float) -> tuple:
    """TFLite's asymmetric int8 activation quantization of the range [lo, hi] (0 included): (scale, zero point)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    scale = (hi - lo) / 255.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zp


def quantize_multiplier(m: float) -> tuple:
    """TFLite's QuantizeMultiplier: m = q / 2^31 * 2^shift, q a Q31 in [2^30, 2^31)."""
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)
    qf = int(math.floor(q * (1 << 31) + 0.5))
    if qf == 1 << 31:
        qf //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return qf, shift


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """CMSIS-NN's arm_nn_requantize (doubling high multiply rounding half up, then a rounding right shift, midpoints
    away from zero), on int64 arrays; per-channel parameters broadcast over the last axis."""
    wrap = lambda v: ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # noqa: E731
    left = np.maximum(shift, 0).astype(np.int64)
    right = np.maximum(-shift, 0).astype(np.int64)
    v = wrap(acc.astype(np.int64) << left)
    hi = wrap((v * mult.astype(np.int64) + (1 << 30)) >> 31)
    mask = (np.int64(1) << right) - 1
    rem = hi & mask
    res = hi >> right
    threshold = (mask >> 1) + (res < 0)
    return res + (rem > threshold)


@dataclass
class TwinLayer:
    kind: str  # conv, fc, maxpool, sign
    in_shape: tuple  # NHWC without N (h, w, c), or (n,) for fc
    out_shape: tuple
    w: np.ndarray = None  # int8, conv [Cout, 3, 3, Cin], fc [Cout, Cin] (NHWC flatten order)
    b: np.ndarray = None  # int32
    mult: np.ndarray = None
    shift: np.ndarray = None
    in_zp: int = 0
    out_zp: int = 0
    zp: int = 0  # sign: the zero point of its tensor


@dataclass
class Twin:
    layers: list
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    in_shape: tuple  # (h, w, c)
    out_size: int

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """NCHW float -> NHWC int8 (one sample per row of the result)."""
        q = np.round(np.asarray(x, np.float64) / self.in_scale) + self.in_zp
        q = np.clip(q, -128, 127).astype(np.int8)
        return q.transpose(0, 2, 3, 1) if q.ndim == 4 else q

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float64) - self.out_zp) * self.out_scale

    @property
    def weight_bytes(self) -> int:
        return sum(l.w.nbytes + l.b.nbytes + l.mult.nbytes + l.shift.nbytes for l in self.layers
                   if l.kind in ("conv", "fc"))

    def run(self, q: np.ndarray, signs=None) -> np.ndarray:
        """The twin's integer arithmetic in numpy (batched NHWC int8 -> int8 outputs), as CMSIS-NN computes it;
        ``signs``: a list receiving each binarizer's input >= its zero point (flattened per sample)."""
        y = q.astype(np.int64)
        for l in self.layers:
            if l.kind == "sign":
                if signs is not None:
                    signs.append((y >= l.zp).reshape(y.shape[0], -1))
                y = np.where(y >= l.zp, 1, -1).astype(np.int64)
            elif l.kind == "maxpool":
                n, h, w, c = y.shape
                y = y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
            elif l.kind == "conv":
                n, h, w, c = y.shape
                xp = np.pad(y - l.in_zp, ((0, 0), (1, 1), (1, 1), (0, 0)))
                cols = np.stack([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=3)
                acc = cols.reshape(n, h, w, 9 * c) @ l.w.reshape(l.w.shape[0], -1).astype(np.int64).T + l.b
                y = np.clip(requantize(acc, l.mult, l.shift) + l.out_zp, -128, 127)
            elif l.kind == "fc":
                acc = (y.reshape(y.shape[0], -1) - l.in_zp) @ l.w.astype(np.int64).T + l.b
                y = np.clip(requantize(acc, l.mult, l.shift) + l.out_zp, -128, 127)
        return y.reshape(y.shape[0], -1).astype(np.int8)


def build_twin(model, calib: np.ndarray) -> Twin:
    """The int8 twin of ``model``: BN folded, weights per-channel symmetric, activations per-tensor calibrated on
    ``calib`` (NCHW float inputs)."""
    ops = ops_of(model)
    xs = torch.tensor(calib)
    with torch.no_grad():
        points = []
        ref = float_chain(ops, xs, points)
        out = model(xs.float()).double()
    if not torch.allclose(ref, out, rtol=1e-4, atol=1e-4 * float(out.abs().max())):
        raise RuntimeError(f"the op chain does not reproduce the model: |diff| {float((ref - out).abs().max()):.3g}")
    qp = [act_qparams(float(p.min()), float(p.max())) for p in points]
    in_scale, in_zp = qp[0]
    layers = []
    shape = tuple(calib.shape[2:]) + (calib.shape[1],) if calib.ndim == 4 else (calib.shape[1],)
    cur_scale, cur_zp = in_scale, in_zp
    k = 1  # the next recorded point
    chw = None  # the (c, h, w) of the tensor a flatten saw
    for op in ops:
        if op.sign_input:
            layers.append(TwinLayer("sign", shape, shape, zp=cur_zp))
            cur_scale, cur_zp = 1.0, 0
        if op.kind == "maxpool":
            h, w, c = shape
            layers.append(TwinLayer("maxpool", shape, (h // 2, w // 2, c)))
            shape = (h // 2, w // 2, c)
            continue
        if op.kind == "flatten":
            chw = (shape[2], shape[0], shape[1])
            shape = (int(np.prod(shape)),)
            continue
        wf, bf = (t.numpy() for t in folded(op))
        if op.kind == "conv":
            wf = wf.transpose(0, 2, 3, 1)  # OIHW -> OHWI
        elif chw is not None:  # PyTorch flattens NCHW, the twin NHWC
            c, h, w = chw
            wf = wf.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(wf.shape[0], -1)
        out_scale, out_zp = qp[k]
        k += 1
        amax = np.abs(wf.reshape(wf.shape[0], -1)).max(axis=1)
        w_scale = np.where(amax > 0, amax / 127.0, 1.0)
        wq = np.clip(np.round(wf / w_scale.reshape(-1, *([1] * (wf.ndim - 1)))), -127, 127).astype(np.int8)
        bq = np.clip(np.round(bf / (cur_scale * w_scale)), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        ms = [quantize_multiplier(cur_scale * s / out_scale) for s in w_scale]
        mult = np.array([m for m, _ in ms], np.int32)
        shift = np.array([s for _, s in ms], np.int32)
        if op.kind == "conv":
            out_shape = shape[:2] + (wq.shape[0],)
            layers.append(TwinLayer("conv", shape, out_shape, wq, bq, mult, shift, cur_zp, out_zp))
        else:
            out_shape = (wq.shape[0],)
            layers.append(TwinLayer("fc", shape, out_shape, wq, bq, mult, shift, cur_zp, out_zp))
        shape, cur_scale, cur_zp = out_shape, out_scale, out_zp
    in_shape = tuple(calib.shape[2:]) + (calib.shape[1],)
    return Twin(layers, in_scale, in_zp, cur_scale, cur_zp, in_shape, int(np.prod(shape)))


def greedy_plan(blocks: list, align: int = 16) -> ArenaPlan:
    """TFLite Micro's GreedyMemoryPlanner: the blocks largest first, each at the lowest ``align``-ed offset clear of
    the blocks already placed whose lifetimes overlap its own (``Block`` lifetimes as in tvm_bnn's planner)."""
    order = sorted(range(len(blocks)), key=lambda i: (-blocks[i].nbytes, blocks[i].first))
    offsets, placed, size = [0] * len(blocks), [], 0
    for i in order:
        blk, need, offset = blocks[i], aligned(blocks[i].nbytes, align), 0
        for off, sz, other in sorted(placed, key=lambda t: t[0]):
            if other.last < blk.first or blk.last < other.first:
                continue
            if off - offset >= need:
                break
            offset = max(offset, off + sz)
        offsets[i] = offset
        placed.append((offset, need, blk))
        size = max(size, offset + need)
    return ArenaPlan(offsets, size)


def scratch_bytes(layer: TwinLayer, path: str) -> int:
    """The scratch buffer CMSIS-NN asks for (checked on the board against its own get_buffer_size)."""
    if layer.kind == "conv":
        rhs = 9 * layer.in_shape[2]
        if path.startswith("MVE"):
            return 4 * ((rhs + 15) // 16) * 16
        return 4 * ((rhs + 3) // 4 * 4)  # 2 columns of int16
    if layer.kind == "fc" and path.startswith("MVE"):
        return 4 * layer.out_shape[0]  # kernel sums (arm_vector_sum_s8), kept: computed once at init as TFLM does
    return 0


def twin_sources(twin: Twin, inputs_q: np.ndarray, path: str) -> tuple:
    """(C sources of the twin firmware, arena plan, steps, number of buffer sizes twin_init reports, the arena
    tvm_bnn's planner would need) for the board's CMSIS-NN ``path``."""
    steps, tensors = [], []  # tensors: [nbytes, first, last]; index -1 input, -2 output
    cur = -1
    for i, l in enumerate(twin.layers):
        if l.kind == "sign":
            if cur >= 0:
                tensors[cur][2] = i
            steps.append((l, cur, cur))
            continue
        if cur >= 0:
            tensors[cur][2] = i
        last = i == len(twin.layers) - 1
        out = -2 if last else len(tensors)
        if not last:
            tensors.append([int(np.prod(l.out_shape)), i, i])
        steps.append((l, cur, out))
        cur = out
    if cur != -2:
        raise RuntimeError("the twin must end with a conv, fc or pool layer")
    # blocks: every intermediate tensor, then each step's scratch (live during its step); MVE FC kernel sums are
    # persistent (live from the first step to the last)
    blocks = [Block(nb, first, last) for nb, first, last in tensors]
    scratch_idx, persistent_idx = {}, {}
    for i, (l, _, _) in enumerate(steps):
        nb = scratch_bytes(l, path)
        if nb and l.kind == "conv":
            scratch_idx[i] = len(blocks)
            blocks.append(Block(nb, i, i))
        elif nb:
            persistent_idx[i] = len(blocks)
            blocks.append(Block(nb, 0, len(steps) - 1))
    plan = greedy_plan(blocks)
    first_fit = plan_arena(blocks).size  # tvm_bnn's planner (first fit in call order), for comparison

    def tensor(ix):
        return {-1: "in", -2: "out"}.get(ix, f"(g_arena + {plan.offsets[ix] if ix >= 0 else 0})")

    weights = ['#include <stdint.h>\n#include "twin_model.h"\n\n']
    body = []
    init = []
    for i, (l, src, dst) in enumerate(steps):
        name = f"l{i}"
        if l.kind in ("conv", "fc"):
            for suffix, arr in (("w", l.w), ("b", l.b), ("m", l.mult), ("s", l.shift)):
                weights.append(c_array(f"{name}_{suffix}", arr, static=False))
        if l.kind == "sign":
            body.append(f"  TWIN_STEP_BEGIN();\n  twin_sign_s8({tensor(src)}, {int(np.prod(l.in_shape))}, {l.zp});\n"
                        f"  TWIN_STEP_END();\n")
        elif l.kind == "maxpool":
            h, w, c = l.in_shape
            body.append(f"""  TWIN_STEP_BEGIN();
  {{
    static const cmsis_nn_pool_params p = {{{{2, 2}}, {{0, 0}}, {{-128, 127}}}};
    static const cmsis_nn_dims id = {{1, {h}, {w}, {c}}}, fd = {{1, 2, 2, 1}}, od = {{1, {h // 2}, {w // 2}, {c}}};
    const cmsis_nn_context ctx = {{0, 0}};
    st |= arm_max_pool_s8(&ctx, &p, &id, {tensor(src)}, &fd, &od, {tensor(dst)});
  }}
  TWIN_STEP_END();
""")
        elif l.kind == "conv":
            h, w, c = l.in_shape
            co = l.out_shape[2]
            sb = scratch_bytes(l, path)
            buf = f"g_arena + {plan.offsets[scratch_idx[i]]}" if i in scratch_idx else "0"
            body.append(f"""  TWIN_STEP_BEGIN();
  {{
    static const cmsis_nn_conv_params p = {{{-l.in_zp}, {l.out_zp}, {{1, 1}}, {{1, 1}}, {{1, 1}}, {{-128, 127}}}};
    static const cmsis_nn_per_channel_quant_params q = {{(int32_t *){name}_m, (int32_t *){name}_s}};
    static const cmsis_nn_dims id = {{1, {h}, {w}, {c}}}, fd = {{{co}, 3, 3, {c}}}, bd = {{1, 1, 1, {co}}},
                               od = {{1, {h}, {w}, {co}}};
    const cmsis_nn_context ctx = {{{buf}, {sb}}};
    st |= arm_convolve_wrapper_s8(&ctx, &p, &q, &id, {tensor(src)}, &fd, {name}_w, &bd, {name}_b, &od,
                                  {tensor(dst)});
  }}
  TWIN_STEP_END();
""")
            init.append(f"""  {{
    static const cmsis_nn_conv_params p = {{{-l.in_zp}, {l.out_zp}, {{1, 1}}, {{1, 1}}, {{1, 1}}, {{-128, 127}}}};
    static const cmsis_nn_dims id = {{1, {h}, {w}, {c}}}, fd = {{{co}, 3, 3, {c}}}, od = {{1, {h}, {w}, {co}}};
    sizes[n++] = arm_convolve_wrapper_s8_get_buffer_size(&p, &id, &fd, &od);
    rc |= sizes[n - 1] != {sb};
  }}
""")
        elif l.kind == "fc":
            n_in, n_out = l.in_shape[0], l.out_shape[0]
            sb = scratch_bytes(l, path)
            buf = f"g_arena + {plan.offsets[persistent_idx[i]]}" if i in persistent_idx else "0"
            body.append(f"""  TWIN_STEP_BEGIN();
  {{
    static const cmsis_nn_fc_params p = {{{-l.in_zp}, 0, {l.out_zp}, {{-128, 127}}}};
    static const cmsis_nn_per_channel_quant_params q = {{(int32_t *){name}_m, (int32_t *){name}_s}};
    static const cmsis_nn_dims id = {{1, 1, 1, {n_in}}}, fd = {{{n_in}, 1, 1, {n_out}}}, bd = {{1, 1, 1, {n_out}}},
                               od = {{1, 1, 1, {n_out}}};
    const cmsis_nn_context ctx = {{{buf}, {sb}}};
    st |= arm_fully_connected_per_channel_s8(&ctx, &p, &q, &id, {tensor(src)}, &fd, {name}_w, &bd, {name}_b, &od,
                                             {tensor(dst)});
  }}
  TWIN_STEP_END();
""")
            init.append(f"""  {{
    static const cmsis_nn_dims fd = {{{n_in}, 1, 1, {n_out}}};
    sizes[n++] = arm_fully_connected_s8_get_buffer_size(&fd);
    rc |= sizes[n - 1] != {sb};
""" + (f"""    arm_vector_sum_s8((int32_t *)({buf}), {n_in}, {n_out}, {name}_w, {-l.in_zp}, 0, {name}_b);
""" if sb else "") + "  }\n")
    decls = "".join(f"extern const {t} l{i}_{s}[];\n" for i, (l, _, _) in enumerate(steps) if l.kind in ("conv", "fc")
                    for s, t in (("w", "int8_t"), ("b", "int32_t"), ("m", "int32_t"), ("s", "int32_t")))
    n_sizes = max(1, sum(l.kind in ("conv", "fc") for l, _, _ in steps))
    in_bytes = int(np.prod(twin.in_shape))
    header = f"""/* generated by bench/cmsis_nn.py: an int8 twin of a BNN on CMSIS-NN */
#ifndef TWIN_MODEL_H
#define TWIN_MODEL_H
#include <stdint.h>
#define TWIN_N_INPUTS {len(inputs_q)}
#define TWIN_IN_BYTES {in_bytes}
#define TWIN_OUT_BYTES {twin.out_size}
#define TWIN_ARENA_BYTES {plan.size}
extern const int8_t twin_inputs[TWIN_N_INPUTS][TWIN_IN_BYTES];
int twin_init(void);
int twin_run(const int8_t *in, int8_t *out);
#endif
"""
    model_c = f"""/* generated by bench/cmsis_nn.py: an int8 twin of a BNN on CMSIS-NN, one call per layer */
#include <stdint.h>

#include "arm_nnfunctions.h"
#include "tvm_bnn_bm.h"
#include "twin_model.h"
#include "twin_ops.h"

#ifdef TWIN_PROFILE_STEPS
#define TWIN_STEP_BEGIN() tvm_bnn_bm_begin()
#define TWIN_STEP_END() tvm_bnn_bm_end()
#else
#define TWIN_STEP_BEGIN()
#define TWIN_STEP_END()
#endif

{decls}
static int8_t g_arena[TWIN_ARENA_BYTES] __attribute__((aligned(16)));

/* CMSIS-NN's buffer sizes against the plan's (output: int32 each); MVE fully connected kernel sums */
int twin_init(void) {{
  int32_t sizes[{n_sizes}] = {{0}};
  int n = 0, rc = 0;
{''.join(init)}  tvm_bnn_bm_output(sizes, sizeof(sizes));
  return rc;
}}

int twin_run(const int8_t *in, int8_t *out) {{
  int st = ARM_CMSIS_NN_SUCCESS;
{''.join(body)}  return st;
}}
"""
    rows = ",\n".join("  {" + ", ".join(str(int(v)) for v in row) + "}" for row in inputs_q.reshape(len(inputs_q), -1))
    inputs_c = ('#include <stdint.h>\n#include "twin_model.h"\n\n'
                "const int8_t twin_inputs[TWIN_N_INPUTS][TWIN_IN_BYTES] __attribute__((aligned(16))) = {\n"
                f"{rows}\n}};\n")
    sources = {"twin_model.h": header, "twin_model.c": model_c, "twin_weights.c": "".join(weights),
               "twin_inputs.c": inputs_c, "twin_ops.c": (C_DIR / "twin_ops.c").read_text(),
               "twin_main.c": (C_DIR / "twin_main.c").read_text()}
    return sources, plan, steps, n_sizes, first_fit


@dataclass
class TwinRun:
    instructions: list  # per inference
    outputs: np.ndarray  # int8 [n, out]
    sizes: list
    text: int
    per_step: list  # (label, instructions) of the first inference
    plan_size: int  # the arena, TFLM's greedy planner
    first_fit_size: int  # the arena as tvm_bnn's planner would place the same blocks


def run_twin(lib: CmsisLib, twin: Twin, inputs_q: np.ndarray) -> TwinRun:
    path = cmsis_path(lib.board)
    sources, plan, steps, n_sizes, first_fit = twin_sources(twin, inputs_q, path)
    tmp = tempfile.mkdtemp(prefix="cmsisnn_twin_")
    try:
        run = run_cmsis_firmware(lib, sources, workdir=tmp)
        # the same firmware with one counted region per step, for the per-layer breakdown (first input only)
        sources1 = twin_sources(twin, inputs_q[:1], path)[0]
        prof = run_cmsis_firmware(lib, sources1, defines=("TWIN_PROFILE_STEPS",), workdir=tmp + "_prof")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp + "_prof", ignore_errors=True)
    if run.exit_code != 0:
        raise RuntimeError(f"twin firmware exited with {run.exit_code}")
    sizes = list(struct.unpack(f"<{n_sizes}i", run.output[:4 * n_sizes]))
    outs = np.frombuffer(run.output[4 * n_sizes:], np.int8).reshape(len(inputs_q), -1)
    labels = [f"{l.kind} {'x'.join(map(str, l.in_shape))}->{'x'.join(map(str, l.out_shape))}" for l, _, _ in steps]
    per_step = list(zip(labels, prof.per_region_instructions))
    return TwinRun(run.per_region_instructions, outs, sizes, run.sizes.get("text", 0), per_step, plan.size,
                   first_fit)


def sign_flips(model, twin: Twin, x: np.ndarray) -> list:
    """Per binarizer: the fraction of its outputs where the twin's sign differs from the float model's."""
    float_in, twin_in = [], []
    with torch.no_grad():
        float_chain(ops_of(model), torch.tensor(x), signs=float_in)
    twin.run(twin.quantize_input(x), signs=twin_in)
    return [float(np.mean((f >= 0) != t)) for f, t in zip(float_in, twin_in)]


def faithfulness(logits: np.ndarray, ref: np.ndarray) -> tuple:
    """(top-1 agreement, mean and max relative L2 error per input)."""
    top1 = float((logits.argmax(1) == ref.argmax(1)).mean())
    rel = np.linalg.norm(logits - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    return top1, float(rel.mean()), float(rel.max())


def twin_faithfulness(lib: CmsisLib, model, calib, held_out, n_board: int, calib_kind: str, labels=None) -> tuple:
    """Build the twin of ``model``, run it on the board for the first ``n_board`` held-out inputs, and print how
    close it is to the float model. Returns (twin, TwinRun)."""
    twin = build_twin(model, calib)
    board_x = held_out[:n_board]
    run = run_twin(lib, twin, twin.quantize_input(board_x))
    sim = twin.run(twin.quantize_input(board_x))
    exact = np.array_equal(sim, run.outputs)
    with torch.no_grad():
        ref_board = model(torch.tensor(board_x)).double().numpy()
        ref_eval = model(torch.tensor(held_out)).double().numpy()
    eval_logits = twin.dequantize(twin.run(twin.quantize_input(held_out)))
    f_board = faithfulness(twin.dequantize(run.outputs), ref_board)
    f_eval = faithfulness(eval_logits, ref_eval)
    flips = sign_flips(model, twin, held_out)
    spread = max(run.instructions) - min(run.instructions)
    print(f"  twin on the board: {len(run.instructions)} inferences, counts within {spread:,.0f} instructions of each "
          f"other; outputs {'bit-exact with' if exact else 'DIFFERENT from'} the numpy model of its integer "
          f"arithmetic; CMSIS-NN's buffer sizes {run.sizes} = the plan's")
    print(f"  twin vs float PyTorch (activations calibrated on {len(calib)} {calib_kind}): on the board's "
          f"{len(board_x)} inputs top-1 agreement {f_board[0]:.0%}, relative L2 error of the logits mean "
          f"{f_board[1]:.3f} max {f_board[2]:.3f}; on {len(held_out)} held-out inputs (numpy model) top-1 "
          f"{f_eval[0]:.1%}, relative error mean {f_eval[1]:.3f} max {f_eval[2]:.3f}")
    print("  binarizer outputs where the twin's sign differs from the float model's, layer by layer: "
          + ", ".join(f"{100 * f:.2f}%" for f in flips))
    if labels is not None:
        acc_f = float((ref_eval.argmax(1) == labels).mean())
        acc_t = float((eval_logits.argmax(1) == labels).mean())
        print(f"  accuracy on the {len(held_out)} held-out digits: float PyTorch {acc_f:.1%}, int8 twin {acc_t:.1%}")
    if not exact:
        bad = np.argwhere(sim != run.outputs)
        print(f"  WARNING: {len(bad)} outputs differ between the board and the numpy model, first {bad[:5].tolist()}")
    return twin, run


def part2(lib: CmsisLib, n_calib: int, n_eval: int, n_board: int, train_epochs: int) -> None:
    from cortexm import SmallBinaryCNN
    from digits_demo import load_data, make_model, train
    from tvm_bnn.zoo import randomize_batchnorm_

    board = lib.board
    # the models and inputs of bench/cortexm.py (same seed, same order)
    torch.manual_seed(0)
    digits = randomize_batchnorm_(make_model()).eval()
    x_digits = torch.randn(1, 1, 8, 8)
    cnn = randomize_batchnorm_(SmallBinaryCNN()).eval()
    x_cnn = torch.randn(1, 3, 32, 32)
    x_train, x_test, y_train, y_test = load_data()
    rng = np.random.default_rng(0)
    cases = [("digits model (8x8)", digits, x_digits, x_train[:n_calib], x_test[:n_eval], "digits images"),
             ("small binary CNN (32x32)", cnn, x_cnn, rng.standard_normal((n_calib, 3, 32, 32)).astype(np.float32),
              rng.standard_normal((n_eval, 3, 32, 32)).astype(np.float32), "standard normal inputs")]
    base = baseline_text(board)
    print(f"\n== Part 2: whole models on {board}: tvm_bnn bundle vs an int8 CMSIS-NN twin of the same architecture ==")
    print(f"  models and tvm_bnn's input as in bench/cortexm.py (untrained, seed 0, randomize_batchnorm_); "
          f"'model code' = .text - weights - test inputs - {base:,} B (startup + empty main)")
    for name, model, x, calib, held_out, calib_kind in cases:
        t0 = time.time()
        cm = tvm_bnn.compile(model, board, example_inputs=(x,), progress=False)
        with torch.no_grad():
            ref_x = model(x).numpy()
        err = float(np.abs(cm(x) - ref_x).max())
        s = cm.stats
        macs = cm.report.binary_macs
        print(f"\n{name} on {board} (tvm_bnn |bundle - PyTorch| {err:.1e})")
        twin, run = twin_faithfulness(lib, model, calib, held_out, n_board, calib_kind)
        ins = run.instructions[0]
        tw_weights = twin.weight_bytes
        tw_inputs = n_board * int(np.prod(twin.in_shape))
        tw_code_stats = run.text - tw_weights - tw_inputs  # as cm.stats computes it: the startup included
        tw_code = tw_code_stats - base
        tb_code = s.flash_code_bytes - base  # cm.stats leaves the test input out already
        print(f"  {'':38s} {'tvm_bnn (binary)':>17s} {'CMSIS-NN int8 twin':>19s} {'twin / tvm_bnn':>15s}")
        rows = [("instructions / inference", s.instructions_per_inference, ins),
                ("weight flash (B)", s.flash_weight_bytes, tw_weights),
                ("code flash, startup included (B)", s.flash_code_bytes, tw_code_stats),
                ("code flash, model code only (B)", tb_code, tw_code),
                ("RAM arena: activations + scratch (B)", s.ram_arena_bytes, run.plan_size)]
        for label, a, b in rows:
            print(f"  {label:38s} {a:>17,.0f} {b:>19,.0f} {b / a:>14.2f}x")
        print(f"  MACs per instruction: tvm_bnn {macs / s.instructions_per_inference:.2f} binary MACs "
              f"(whole model, float stem included), twin {macs / ins:.2f} int8 MACs; tvm_bnn stack "
              f"{s.ram_stack_bytes} B, static RAM {s.ram_static_bytes:,} B")
        print(f"  twin arena planned as TFLM's greedy planner does (largest first); tvm_bnn's planner (first fit in "
              f"call order) would need {run.first_fit_size:,} B for the same tensors")
        total = sum(v for _, v in run.per_step)
        print("  twin per layer (first inference, one counted region per layer):")
        for label, v in run.per_step:
            print(f"    {label:40s} {v:>13,.0f}  {100 * v / total:5.1f}%")
        print(f"  ({time.time() - t0:.0f} s)")
    if train_epochs > 0:
        torch.manual_seed(0)
        trained = train(make_model(), x_train, y_train, train_epochs)
        print(f"\ndigits model trained {train_epochs} epochs (examples/digits_demo.train): the same twin, for "
              "faithfulness on a model with margins")
        _, run = twin_faithfulness(lib, trained, x_train[:n_calib], x_test[:n_eval], n_board, "digits images",
                                   labels=y_test[:n_eval])
        print(f"  twin instructions / inference {run.instructions[0]:,.0f} (the untrained twin's count: the kernels "
              "do not depend on the weights)")


def tvm_bnn_state() -> str:
    """The commit of the checkout tvm_bnn is imported from, and whether its tvm_bnn/ has uncommitted changes
    (the bundle's counts depend on them)."""
    pkg = Path(tvm_bnn.__file__).resolve().parent
    git = ["git", "-C", str(pkg.parent)]
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not head:
        return f"{pkg} (not a git checkout)"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "tvm_bnn"], capture_output=True,
                           text=True).stdout.split("\n")
    files = [line[3:] for line in dirty if line.strip()]
    return f"{pkg} at {head}" + (f" + uncommitted changes in {', '.join(files)}" if files else " (clean)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cmsis-nn", default=None, help="CMSIS-NN source tree (default ../shared/third_party/"
                        "cmsis-nn next to the repository)")
    parser.add_argument("--board", default="cortex-m4", choices=list(qemu.BOARDS))
    parser.add_argument("--part", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--shapes", nargs="+", default=None, help="HxWxC, default: " +
                        " ".join("x".join(map(str, s)) for s in SHAPES))
    parser.add_argument("--low-bit", nargs="*", default=None, choices=["w1a2", "w2a2", "w2a2-dorefa"],
                        help="part 1 also for these few-bit variants (issue 21; no value: all three)")
    parser.add_argument("--memcpy", choices=["newlib", "startup"], default="newlib",
                        help="memcpy/memset for CMSIS-NN: newlib's (default) or the startup's byte loops")
    parser.add_argument("--calib", type=int, default=300, help="calibration inputs of the twin")
    parser.add_argument("--eval", type=int, default=500, help="held-out inputs for the twin's faithfulness")
    parser.add_argument("--board-inputs", type=int, default=8, help="inferences of the twin on the board")
    parser.add_argument("--train-epochs", type=int, default=25,
                        help="also check the twin of a digits model trained this long (0: skip)")
    args = parser.parse_args(argv)
    root = cmsis_nn_tree(args.cmsis_nn)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes] if args.shapes else SHAPES
    b = qemu.board(args.board)
    cc = qemu.require_tool("arm-none-eabi-gcc")
    gcc = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"CMSIS-NN vs tvm_bnn on {args.board}: QEMU {b.machine}, -icount shift={qemu.ICOUNT_SHIFT}, "
          f"SysTick {b.clock_hz / 1e6:g} MHz (executed instructions, not cycles)")
    print(f"  CMSIS-NN: {root} ({cmsis_nn_version(root)}), path: {cmsis_path(args.board)}")
    print(f"  CMSIS-NN flags: {' '.join(lib_flags(args.board))}; memcpy/memset: "
          f"{'newlib (libc.a of the multilib)' if args.memcpy == 'newlib' else 'startup byte loops'}")
    print(f"  tvm_bnn bundle flags: {' '.join(b.cflags)} -std=c99 {' '.join(BUNDLE_FLAGS)}")
    print(f"  {gcc}; both linked with tvm_bnn's startup_cortexm.c and cortexm.ld (tvm_bnn.targets.qemu)")
    print(f"  tvm_bnn: {tvm_bnn_state()}")
    lib = build_cmsis_lib(root, args.board, args.memcpy)
    t0 = time.time()
    if 1 in args.part:
        part1(lib, shapes)
        if args.low_bit is not None:
            part1_low_bit(lib, shapes, args.low_bit or ["w1a2", "w2a2", "w2a2-dorefa"])
    if 2 in args.part:
        part2(lib, args.calib, args.eval, args.board_inputs, args.train_epochs)
    print(f"\n(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
