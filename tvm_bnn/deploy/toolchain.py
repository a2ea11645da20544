"""What building a bundle takes: the compiler flags every build of it needs, the libm functions its kernels call, and
its ``Makefile``, ``CMakeLists.txt`` and ``README.md`` (arm-none-eabi-gcc for a Cortex-M; the cross gcc of an ARM Linux
architecture)."""
from __future__ import annotations

import re

from ..targets import qemu

MATH_FUNCS = ("expf", "exp", "sqrtf", "sqrt", "logf", "log", "powf", "pow", "tanhf", "tanh", "erff", "erf",
              "fabsf", "fabs", "floorf", "floor", "ceilf", "ceil", "roundf", "round", "nearbyintf", "nearbyint",
              "truncf", "trunc", "fmaxf", "fmax", "fminf", "fmin", "fmodf", "fmod", "sinf", "sin", "cosf", "cos",
              "expm1f", "log1pf", "exp2f", "log2f", "rsqrtf", "sigmoid")
# the kernels access the arena through pointers of their own element types
CFLAGS_EXTRA = ("-fno-strict-aliasing",)


def math_functions(src, llvm: bool) -> tuple:
    """The libm functions the kernels of ``src`` (a ``CSource``; with ``llvm``, the LLVM-compiled objects) call."""
    if llvm:
        return tuple(f for f in MATH_FUNCS if re.search(rf"^declare .*@{f}\(", src.llvm_ir, re.M))
    return tuple(f for f in MATH_FUNCS if re.search(rf"\b{f}\(", src.code))


def makefile(math, arch=None, kernel_objects: bool = False) -> str:
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


def cmakelists(math, arch=None, kernel_objects: bool = False) -> str:
    """A CMakeLists.txt beside the Makefile (as CMSIS-NN ships one): the static library ``tvm_bnn_model`` for a
    firmware or program that ``add_subdirectory``'s the bundle; the CPU flags come from the project's toolchain."""
    sources = "model.c weights.S" if arch is not None else "model.c weights.c"
    langs = "C ASM" if arch is not None else "C"
    objects = ("\n# the kernels, compiled by TVM's LLVM codegen for the board\n"
               "target_sources(tvm_bnn_model PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/kernels.o)\n"
               "set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/kernels.o PROPERTIES EXTERNAL_OBJECT TRUE"
               " GENERATED TRUE)\n") if kernel_objects else ""
    libm = "\ntarget_link_libraries(tvm_bnn_model PUBLIC m)  # the kernels call " + ", ".join(math) + "\n" \
        if math or arch is not None else ""
    where = (f"{arch} Linux (a cross toolchain file for {qemu.linux_arch(arch).cc})" if arch is not None else
             "a Cortex-M (your firmware's arm-none-eabi toolchain file sets -mcpu, -mthumb and the float ABI, as for "
             "CMSIS-NN)")
    return f"""# tvm_bnn model bundle as a CMake library, for {where}.
#   add_subdirectory(path/to/this/bundle tvm_bnn_model)       # in your project's CMakeLists.txt
#   target_link_libraries(your_firmware PRIVATE tvm_bnn_model)  # then #include "model.h"
# Standalone: cmake -B build -DCMAKE_TOOLCHAIN_FILE=your-toolchain.cmake && cmake --build build
# Extra flags for this library only (e.g. -mcpu=cortex-m4 when no toolchain file sets it): -DTVM_BNN_FLAGS="..."
cmake_minimum_required(VERSION 3.15)
project(tvm_bnn_model LANGUAGES {langs})

set(TVM_BNN_FLAGS "" CACHE STRING "extra compiler flags for the tvm_bnn model library")
add_library(tvm_bnn_model STATIC {' '.join('${CMAKE_CURRENT_SOURCE_DIR}/' + f for f in sources.split())})
target_include_directories(tvm_bnn_model PUBLIC ${{CMAKE_CURRENT_SOURCE_DIR}})
set_target_properties(tvm_bnn_model PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON)
# the kernels share one arena through pointers of different types
separate_arguments(_tvm_bnn_flags UNIX_COMMAND "${{TVM_BNN_FLAGS}}")
target_compile_options(tvm_bnn_model PRIVATE -fno-strict-aliasing -ffunction-sections -fdata-sections
                       $<$<COMPILE_LANGUAGE:C>:-Wall -Wextra> ${{_tvm_bnn_flags}}){objects}{libm}"""


def readme(signature, arena, no_reuse, weights, steps, math, arch=None) -> str:
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

Build: `make` ({a.cc}) gives `libtvm_bnn_model.a` (or CMake: `add_subdirectory` this directory and link
`tvm_bnn_model`); link it into your program with `-lm`, or build directly:
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
`make CPU=cortex-m0 FLOAT_ABI=soft`) gives `libtvm_bnn_model.a`; with CMake, `add_subdirectory(<this directory>
tvm_bnn_model)` and `target_link_libraries(<your firmware> PRIVATE tvm_bnn_model)` in your firmware's
CMakeLists.txt (your toolchain file sets the CPU flags, as for CMSIS-NN); or add `model.c` and `weights.c` to your
project. Compile with `-fno-strict-aliasing` (the kernels share the arena through pointers of different types).

```c
#include "model.h"
static float input[TVM_BNN_INPUT_SIZE], output[TVM_BNN_OUTPUT_SIZE];
/* fill input */
tvm_bnn_model_run(input, output);
```

Calls per inference:

{calls}
"""
