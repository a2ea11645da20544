"""Run plain C on an emulated Cortex-M board (QEMU system emulation + semihosting), or on the host, and read back
the outputs and an instruction count.

Firmware = the given C sources + ``deploy/startup/startup_cortexm.c`` (vector table, reset handler that copies .data
and zeroes .bss, FPU enable, SysTick, semihosting) + a linker script (code and constants at 0x0, RAM at 0x20000000),
built with ``arm-none-eabi-gcc -ffreestanding -nostdlib ... -lgcc``. The sources provide ``int main(void)`` and talk
to the harness through ``tvm_bnn_bm.h``: ``tvm_bnn_bm_output(ptr, nbytes)`` appends bytes to what the runner returns,
``tvm_bnn_bm_begin()/end()`` bracket the code to count.

Instruction counts: QEMU has no cycle model. Under ``-icount shift=S,align=off,sleep=off`` every instruction advances
virtual time by 2^S ns, and SysTick runs on the board clock (25 MHz on mps2, 32 MHz on mps3), so
``instructions = ticks * (1e9 / clock_hz) / 2**S``. ``calibrate()`` checks this on a loop of known length. These are
executed instructions, not cycles: a Cortex-M4 takes 1 cycle for most ALU ops, 2 for loads (1 when pipelined), 1-3
for a taken branch.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ToolchainMissingError, TvmBnnError

STARTUP_DIR = Path(__file__).resolve().parent.parent / "deploy" / "startup"
ICOUNT_SHIFT = 7


@dataclass(frozen=True)
class Board:
    cpu: str
    machine: str  # qemu-system-arm -M
    cflags: tuple
    flash_kb: int
    ram_kb: int
    clock_hz: int  # SysTick's processor clock in QEMU
    mve: bool = False  # Helium (M-profile vector extension): the C kernels count 4 channels per vector


_MPS2 = dict(flash_kb=4096, ram_kb=4096, clock_hz=25_000_000)
BOARDS = {
    "cortex-m4": Board("cortex-m4", "mps2-an386",
                       ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), **_MPS2),
    "cortex-m7": Board("cortex-m7", "mps2-an500",
                       ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"), **_MPS2),
    "cortex-m55": Board("cortex-m55", "mps3-an547", ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
                        flash_kb=512, ram_kb=512, clock_hz=32_000_000, mve=True),
    "cortex-m3": Board("cortex-m3", "mps2-an385", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), **_MPS2),
    # no Cortex-M0 board in QEMU's mps2 family: ARMv6-M code runs unchanged on the M3 of AN385
    "cortex-m0": Board("cortex-m0", "mps2-an385", ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"), **_MPS2),
}

_PACKAGES = {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
             "qemu-system-arm": "qemu-system-arm", "qemu-system-aarch64": "qemu-system-arm", "gcc": "gcc",
             "clang": "clang", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
             "arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
             "qemu-aarch64": "qemu-user", "qemu-arm": "qemu-user"}


class FirmwareError(TvmBnnError, RuntimeError):
    """The firmware did not build, crashed, timed out or exited non-zero."""


def board(name: str | Board) -> Board:
    if isinstance(name, Board):
        return name
    try:
        return BOARDS[name.strip().lower()]
    except KeyError:
        raise TvmBnnError(f"no emulated board for {name!r}; choose one of {', '.join(BOARDS)}") from None


def require_tool(tool: str) -> str:
    """Path of an external tool, or ToolchainMissingError naming the Debian package to install."""
    path = shutil.which(tool)
    if path is None:
        pkg = _PACKAGES.get(tool, tool)
        raise ToolchainMissingError(f"{tool} is not installed; install it with: apt-get install {pkg}")
    return path


def _run(cmd, cwd, timeout, what):
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise FirmwareError(f"{what} timed out after {timeout} s: {' '.join(map(str, cmd))}") from exc
    return proc


def _write_sources(sources: Mapping[str, str | bytes], workdir: Path) -> list:
    """Write the files; return those to compile (``.c``, ``.S``). Bytes values are data (e.g. a weights blob that
    a ``.S`` file ``.incbin``s), written but not compiled."""
    files = []
    for name, text in sources.items():
        path = workdir / name
        if isinstance(text, bytes):
            path.write_bytes(text)
            continue
        path.write_text(text)
        if name.endswith((".c", ".S")):
            files.append(path)
    return files


@dataclass
class BoardRun:
    output: bytes
    exit_code: int
    ticks: int  # SysTick ticks summed over the begin/end regions, minus the overhead of an empty region each
    regions: int
    board: Board
    elf: Path
    sizes: dict = field(default_factory=dict)  # text/data/bss bytes
    stderr: str = ""
    icount_shift: int = ICOUNT_SHIFT
    per_region: list = field(default_factory=list)  # ticks of each region, where the startup records them

    @property
    def instructions(self) -> float:
        """Executed instructions inside the begin/end regions (see the module docstring)."""
        return self.ticks * (1e9 / self.board.clock_hz) / 2 ** self.icount_shift

    @property
    def per_region_instructions(self) -> list:
        return [t * (1e9 / self.board.clock_hz) / 2 ** self.icount_shift for t in self.per_region]


def build_firmware(sources: Mapping[str, str], target: str | Board = "cortex-m4", workdir: str | Path | None = None,
                   opt: str = "-O2", defines: Sequence[str] = (), extra_cflags: Sequence[str] = (),
                   stack_bytes: int = 16384, objects: Mapping[str, bytes] | None = None, libm: bool = False) -> Path:
    """Write ``sources`` (file name -> text; ``.c`` files are compiled, others, e.g. headers, only written) and link
    them with the startup code into ``fw.elf``; ``libm``: link newlib's libm (and the libc it needs for errno), for
    float kernels that call tanhf, expf, ..."""
    b = board(target)
    cc = require_tool("arm-none-eabi-gcc")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="tvm_bnn_fw_"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = _write_sources(sources, workdir)
    for name, data in (objects or {}).items():  # e.g. kernels compiled by TVM's LLVM codegen for thumbv7em
        (workdir / name).write_bytes(data)
        files.append(workdir / name)
    ld = (STARTUP_DIR / "cortexm.ld.in").read_text().replace("@FLASH_KB@", str(b.flash_kb)).replace(
        "@RAM_KB@", str(b.ram_kb)).replace("@STACK_BYTES@", str(int(stack_bytes)))
    (workdir / "link.ld").write_text(ld)
    elf = workdir / "fw.elf"
    cmd = [cc, *b.cflags, "-std=c99", opt, "-g", "-fstack-usage", "-ffreestanding", "-nostdlib", "-Wall", "-Werror",
           "-ffunction-sections", "-fdata-sections", *[f"-D{d}" for d in defines], *extra_cflags,
           f"-I{STARTUP_DIR}", f"-I{workdir}", str(STARTUP_DIR / "startup_cortexm.c"), *map(str, files),
           "-T", str(workdir / "link.ld"), "-Wl,--gc-sections", *(("-lm", "-lc") if libm else ()), "-lgcc",
           "-o", str(elf)]
    proc = _run(cmd, workdir, 300, "arm-none-eabi-gcc")
    if proc.returncode != 0:
        raise FirmwareError(f"firmware build failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return elf


def stack_usage(workdir: str | Path) -> dict:
    """Static stack bytes per function, from the ``.su`` files gcc's -fstack-usage wrote in ``workdir``."""
    usage = {}
    for su in Path(workdir).glob("*.su"):
        for line in su.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip().isdigit():
                usage[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    return usage


def elf_sizes(elf: Path) -> dict:
    size = shutil.which("arm-none-eabi-size")
    if size is None:
        return {}
    out = subprocess.run([size, "-A", str(elf)], capture_output=True, text=True).stdout
    secs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            secs[parts[0]] = int(parts[1])
    return {"text": secs.get(".text", 0), "data": secs.get(".data", 0), "bss": secs.get(".bss", 0)}


def _per_region(raw: bytes, overhead: int) -> list:
    """The startup's per-region tick counts (uint64 each), minus the cost of an empty region."""
    n = len(raw) // 8
    return [max(0, t - overhead) for t in struct.unpack(f"<{n}Q", raw[:8 * n])]


def run_firmware(elf: str | Path, target: str | Board = "cortex-m4", timeout: float = 120) -> BoardRun:
    """Run ``fw.elf`` under qemu-system-arm with semihosting and -icount; the outputs are read from the files the
    firmware writes into its own directory."""
    b = board(target)
    qemu = require_tool("qemu-system-arm")
    elf = Path(elf).resolve()
    workdir = elf.parent
    for name in ("tvm_bnn_out.bin", "tvm_bnn_ticks.bin"):
        (workdir / name).unlink(missing_ok=True)
    cmd = [qemu, "-M", b.machine, "-display", "none", "-serial", "none", "-monitor", "none", "-nodefaults",
           "-semihosting-config", "enable=on,target=native", "-icount", f"shift={ICOUNT_SHIFT},align=off,sleep=off",
           "-kernel", str(elf)]
    proc = _run(cmd, workdir, timeout, "qemu-system-arm")
    if proc.returncode != 0:
        raise FirmwareError(f"firmware exited with {proc.returncode} on {b.machine}: {proc.stderr.strip()}")
    out_path, ticks_path = workdir / "tvm_bnn_out.bin", workdir / "tvm_bnn_ticks.bin"
    if not ticks_path.exists():
        raise FirmwareError(f"firmware on {b.machine} finished without writing its tick counts: {proc.stderr}")
    raw = ticks_path.read_bytes()
    ticks, regions, overhead = struct.unpack("<3Q", raw[:24])
    return BoardRun(output=out_path.read_bytes() if out_path.exists() else b"", exit_code=proc.returncode,
                    ticks=max(0, ticks - regions * overhead), regions=regions, board=b, elf=elf,
                    sizes=elf_sizes(elf), stderr=proc.stderr, per_region=_per_region(raw[24:], overhead))


def run_on_board(sources: Mapping[str, str], target: str | Board = "cortex-m4", workdir=None, opt: str = "-O2",
                 defines: Sequence[str] = (), extra_cflags: Sequence[str] = (), timeout: float = 120,
                 objects: Mapping[str, bytes] | None = None, libm: bool = False) -> BoardRun:
    elf = build_firmware(sources, target, workdir, opt, defines, extra_cflags, objects=objects, libm=libm)
    return run_firmware(elf, target, timeout)


@dataclass
class HostRun:
    output: bytes
    compiler: str
    exe: Path


def run_on_host(sources: Mapping[str, str], cc: str = "gcc", workdir=None, opt: str = "-O2",
                defines: Sequence[str] = (), extra_cflags: Sequence[str] = (), timeout: float = 60,
                objects: Mapping[str, bytes] | None = None, launcher: Sequence[str] = (),
                ldflags: Sequence[str] = ()) -> HostRun:
    """The same sources for the host: ``cc -std=c99 -Wall -Wextra -Werror`` with ``host_shim.c``, run, outputs back.

    ``objects`` (file name -> bytes, e.g. LLVM-compiled kernels) are linked in; ``launcher`` runs the program (e.g.
    ``["qemu-aarch64"]`` for a cross-compiled one, see :func:`run_linux_user`)."""
    compiler = require_tool(cc)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"tvm_bnn_{os.path.basename(cc)}_"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = _write_sources(sources, workdir)
    for name, data in (objects or {}).items():
        (workdir / name).write_bytes(data)
        files.append(workdir / name)
    exe = workdir / "prog"
    cmd = [compiler, "-std=c99", opt, "-Wall", "-Wextra", "-Werror", *[f"-D{d}" for d in defines], *extra_cflags,
           f"-I{STARTUP_DIR}", f"-I{workdir}", str(STARTUP_DIR / "host_shim.c"), *map(str, files), *ldflags, "-lm",
           "-o", str(exe)]
    proc = _run(cmd, workdir, 300, cc)
    if proc.returncode != 0:
        raise FirmwareError(f"build failed:\n{' '.join(cmd)}\n{proc.stderr}")
    out_path = workdir / "tvm_bnn_out.bin"
    out_path.unlink(missing_ok=True)
    proc = _run([*launcher, str(exe)], workdir, timeout, str(exe))
    if proc.returncode != 0:
        raise FirmwareError(f"program exited with {proc.returncode}{' under ' + launcher[0] if launcher else ''}: "
                            f"{proc.stderr}")
    return HostRun(out_path.read_bytes() if out_path.exists() else b"", cc, exe)


@dataclass(frozen=True)
class LinuxArch:
    """An ARM Linux user-mode target: cross gcc (static link, so no sysroot at run time) and its QEMU."""

    name: str
    cc: str
    qemu: str
    cflags: tuple


LINUX_ARCHES = {
    "aarch64": LinuxArch("aarch64", "aarch64-linux-gnu-gcc", "qemu-aarch64", ("-march=armv8-a",)),
    "armv7": LinuxArch("armv7", "arm-linux-gnueabihf-gcc", "qemu-arm",
                       ("-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard")),
}


def linux_arch(name: str) -> LinuxArch:
    try:
        return LINUX_ARCHES[name]
    except KeyError:
        raise TvmBnnError(f"no ARM Linux emulation for {name!r}; choose one of {', '.join(LINUX_ARCHES)}") from None


def run_linux_user(sources: Mapping[str, str], arch: str = "aarch64", objects: Mapping[str, bytes] | None = None,
                   workdir=None, opt: str = "-O2", extra_cflags: Sequence[str] = (), timeout: float = 300) -> HostRun:
    """Cross-compile ``sources`` (+ ``objects``) for ARM Linux (static) and run them under qemu-user."""
    a = linux_arch(arch)
    launcher = require_tool(a.qemu)
    return run_on_host(sources, a.cc, workdir, opt, extra_cflags=(*a.cflags, *extra_cflags), timeout=timeout,
                       objects=objects, launcher=[launcher], ldflags=["-static"])


AARCH64_ICOUNT_SHIFT = 0  # 1 ns of virtual time per instruction; the 62.5 MHz counter then ticks every 16
BARE_METAL_ICOUNT_SHIFT = AARCH64_ICOUNT_SHIFT


@dataclass(frozen=True)
class BareMetalArch:
    """A bare-metal QEMU "virt" machine that counts the instructions of the code an ARM Linux target runs."""

    name: str  # the LinuxArch it stands in for
    qemu: str
    cpu: str
    startup: str  # in deploy/startup
    linker_script: str  # in deploy/startup, @STACK_BYTES@ filled in
    memory_mb: int


BARE_METAL_ARCHES = {
    "aarch64": BareMetalArch("aarch64", "qemu-system-aarch64", "cortex-a72", "startup_aarch64.c",
                             "aarch64_virt.ld.in", 2048),
    "armv7": BareMetalArch("armv7", "qemu-system-arm", "cortex-a7", "startup_armv7.c", "armv7_virt.ld.in", 1024),
}


def count_bare_metal(sources: Mapping[str, str], arch: str = "aarch64", objects: Mapping[str, bytes] | None = None,
                     workdir=None, opt: str = "-O2", extra_cflags: Sequence[str] = (), timeout: float = 1800,
                     stack_bytes: int = 1 << 20) -> BoardRun:
    """Instructions of the begin/end regions of ``sources`` (+ ``objects``) on a bare-metal ``arch`` (QEMU virt,
    ``-icount``: Cortex-A72 for aarch64, startup ``deploy/startup/startup_aarch64.c``; Cortex-A7 for armv7,
    ``startup_armv7.c``). qemu-user has no instruction count; the same C and objects, built by the same cross gcc
    with the same flags as for ``run_linux_user``, run here without an OS. ``BoardRun.instructions`` is the count;
    outputs as for a board."""
    a, bm = linux_arch(arch), BARE_METAL_ARCHES[arch]
    cc = require_tool(a.cc)
    qemu = require_tool(bm.qemu)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"tvm_bnn_{arch}_bm_"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = _write_sources(sources, workdir)
    for name, data in (objects or {}).items():
        (workdir / name).write_bytes(data)
        files.append(workdir / name)
    ld = (STARTUP_DIR / bm.linker_script).read_text().replace("@STACK_BYTES@", str(int(stack_bytes)))
    (workdir / "link.ld").write_text(ld)
    elf = workdir / "fw.elf"
    cmd = [cc, *a.cflags, "-std=c99", opt, "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
           "-Wall", "-Werror", *extra_cflags, f"-I{STARTUP_DIR}", f"-I{workdir}",
           str(STARTUP_DIR / bm.startup), *map(str, files), "-T", str(workdir / "link.ld"), "-lm", "-lgcc",
           "-o", str(elf)]
    proc = _run(cmd, workdir, 300, a.cc)
    if proc.returncode != 0:
        raise FirmwareError(f"bare-metal {arch} build failed:\n{' '.join(cmd)}\n{proc.stderr}")
    for name in ("tvm_bnn_out.bin", "tvm_bnn_ticks.bin"):
        (workdir / name).unlink(missing_ok=True)
    run = [qemu, "-M", "virt", "-cpu", bm.cpu, "-m", str(bm.memory_mb), "-display", "none", "-serial", "none",
           "-monitor", "none", "-nodefaults", "-semihosting-config", "enable=on,target=native",
           "-icount", f"shift={BARE_METAL_ICOUNT_SHIFT},align=off,sleep=off", "-kernel", str(elf)]
    proc = _run(run, workdir, timeout, bm.qemu)
    ticks_path = workdir / "tvm_bnn_ticks.bin"
    if proc.returncode != 0 or not ticks_path.exists():
        raise FirmwareError(f"bare-metal {arch} program failed (exit {proc.returncode}): {proc.stderr.strip()}")
    raw = ticks_path.read_bytes()
    ticks, regions, overhead, freq = struct.unpack("<4Q", raw[:32])
    board_ = Board(bm.cpu, "virt", tuple(a.cflags), 0, bm.memory_mb << 10, int(freq))
    out_path = workdir / "tvm_bnn_out.bin"
    return BoardRun(output=out_path.read_bytes() if out_path.exists() else b"", exit_code=0,
                    ticks=max(0, ticks - regions * overhead), regions=regions, board=board_, elf=elf,
                    sizes=elf_sizes(elf), stderr=proc.stderr, icount_shift=BARE_METAL_ICOUNT_SHIFT,
                    per_region=_per_region(raw[32:], overhead))


def count_aarch64(sources: Mapping[str, str], objects: Mapping[str, bytes] | None = None, workdir=None,
                  opt: str = "-O2", extra_cflags: Sequence[str] = (), timeout: float = 1800,
                  stack_bytes: int = 1 << 20) -> BoardRun:
    """:func:`count_bare_metal` on the AArch64 (Cortex-A72) machine."""
    return count_bare_metal(sources, "aarch64", objects, workdir, opt, extra_cflags, timeout, stack_bytes)


# the loop the instruction counts are calibrated on: exactly 2 * N + 1 instructions (a load of N, then N x
# (subtract, branch)), in the assembly of each architecture
CALIBRATION_LOOP = {
    "aarch64": 'ldr x0, =%0\\n1:\\n\\tsubs x0, x0, #1\\n\\tb.ne 1b" :: "i"(@N@) : "x0", "cc"',
    "armv7": '.syntax unified\\nldr r0, =%0\\n1:\\n\\tsubs r0, r0, #1\\n\\tbne 1b" :: "i"(@N@) : "r0", "cc"',
}


def calibrate_bare_metal(arch: str = "aarch64", n: int = 100_000, workdir=None) -> tuple:
    """(measured, expected) instructions of a ``subs; b.ne`` loop of ``n`` iterations on the bare-metal ``arch``
    (expected 2n + 1; the virt counter ticks every 16 instructions, so the two agree to 16 per region end)."""
    main = ('#include "tvm_bnn_bm.h"\nint main(void) {\n  tvm_bnn_bm_begin();\n  __asm__ volatile("'
            + CALIBRATION_LOOP[arch].replace("@N@", str(int(n))) + ');\n  tvm_bnn_bm_end();\n  return 0;\n}\n')
    run = count_bare_metal({"main.c": main}, arch, workdir=workdir)
    return run.instructions, 2 * n + 1


def disassemble(elf: str | Path, symbol: str) -> str:
    """objdump of one function of the firmware (to see what gcc made of, e.g., the popcount helpers)."""
    objdump = require_tool("arm-none-eabi-objdump")
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", f"--disassemble={symbol}", str(elf)],
                          capture_output=True, text=True)
    return proc.stdout


CALIBRATION_MAIN = r"""#include <stdint.h>
#include "tvm_bnn_bm.h"
int main(void) {
  tvm_bnn_bm_begin();
  /* exactly 2 * N + 1 instructions: ldr, then N x (subs, bne) */
  __asm__ volatile(".syntax unified\n\tldr r0, =%0\n1:\n\tsubs r0, r0, #1\n\tbne 1b" :: "i"(@N@) : "r0", "cc");
  tvm_bnn_bm_end();
  return 0;
}
"""


def calibrate(target: str | Board = "cortex-m4", n: int = 1_000_000, workdir=None) -> tuple:
    """(measured, expected) instructions of a ``subs; bne`` loop of ``n`` iterations (expected 2n + 1)."""
    run = run_on_board({"main.c": CALIBRATION_MAIN.replace("@N@", str(int(n)))}, target, workdir)
    return run.instructions, 2 * n + 1


def toolchain_status() -> dict:
    """Which of the external tools are installed (tool -> path or None)."""
    return {tool: shutil.which(tool) for tool in _PACKAGES}


def remove_workdir(path: str | Path) -> None:
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
