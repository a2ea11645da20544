"""``tvm_bnn.load`` for a board that has only TVM's runtime: the library ``CompiledModel.export("model.so")`` wrote
and the metadata beside it, run by the Relax VM, with nothing of tvm_bnn's compiler.

The package ``tvm_bnn`` itself needs TVM's compiler (Relax, the passes, torch for the frontends) at import time; an
ARM board usually has TVM's runtime wheel alone (the emulated board of ``scripts/aarch64_rpc_board.sh`` has the
aarch64 runtime, ``TVM_USE_RUNTIME_LIB=1``). This module imports only ``tvm.runtime`` and numpy, and no other module
of tvm_bnn, so it is shipped to the board as the package ``tvm_bnn`` (``aarch64_rpc_board.sh run`` puts it on the
board's path as ``tvm_bnn/__init__.py``): there ``import tvm_bnn; tvm_bnn.load("model.so")(x)`` runs a model as
``tvm_bnn.load`` does on the host. It reads the same metadata (``<library>.tvm_bnn.json``: target, inputs, outputs,
the per-layer report) and checks inputs the same way (count, shape, a dtype that casts safely). The tests check it
against ``tvm_bnn.load`` on the host.

It also holds ``MachinePool``, which ``tvm_bnn.load`` and every x86 model use too: a Relax ``VirtualMachine`` runs
one call at a time (its registers and frames are per object; TVM's VM crashes when two threads call one), so each
call takes a VM of its own from a pool over the one executable.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading

import numpy as np

META_SUFFIX = ".tvm_bnn.json"  # = tvm_bnn.core.exported_library.META_SUFFIX

__all__ = ["InputError", "LoadedModel", "MachinePool", "TvmBnnError", "load"]


class TvmBnnError(Exception):
    """A library or its metadata cannot be used."""


class InputError(TvmBnnError, ValueError):
    """Inputs given to the model do not match what it was compiled for."""


class MachinePool:
    """Relax VirtualMachines over one executable, lent one per call: safe from any number of threads at once, and
    calls from different threads run in parallel (TVM releases the GIL while a VM runs).

    A VirtualMachine keeps the registers, frames and (``set_input``/``invoke_stateful``) the inputs and outputs of
    the call it runs, so it must serve one call at a time. ``checkout()`` lends an idle VM, or creates one: the pool
    never holds more VMs than there were calls in flight together. The VMs share what the executable
    holds (the code, and the weights, which are its constants: a VM on the CPU refers to them, it copies nothing) and
    TVM's per-device memory allocator (which locks); each has only its own registers and function table.

    ``executable``: a runtime module with ``vm_load_executable`` (what ``tvm.runtime.load_module`` gives) or a
    ``relax.build`` executable. ``lock``: guards the pool's list and the creation of VMs, which reads the
    executable's imports (the owner passes its own lock when it may add imports, see LibraryModel.executable)."""

    def __init__(self, executable, lock=None):
        self._executable = executable
        self._module = None  # the runtime module VMs are created from (a relax.build executable, jitted once)
        self._idle = []  # VMs no call holds; last in, first out (the one whose memory is warm)
        self._lock = lock if lock is not None else threading.RLock()
        self.created = 0  # VMs created so far (for calls alone: the most ever in flight at once)

    def _new(self):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        if self._module is None:
            ex = self._executable
            self._module = ex if isinstance(ex, tvm.runtime.Module) else ex.jit()
        vm = VirtualMachine(self._module, tvm.cpu())
        self.created += 1
        return vm

    @contextlib.contextmanager
    def checkout(self, keep: bool = True):
        """A VM for this caller alone until the block ends; it goes back to the pool then, unless the block raised
        (a VM interrupted mid-call may hold half a frame) or ``keep`` is False (it holds state, e.g. set_input).
        Copy what a call returned (``.numpy()``) inside the block, so that nothing the caller keeps refers to memory
        of the VM once it runs another call."""
        with self._lock:
            vm = self._idle.pop() if self._idle else self._new()
        yield vm
        if keep:  # not reached when the block raised: that VM is dropped
            with self._lock:
                self._idle.append(vm)


class LoadedModel:
    """A model exported as a TVM runtime library, run by the Relax VM of TVM's runtime (one VM per concurrent call:
    ``MachinePool``)."""

    def __init__(self, lib, target_name: str, inputs: list, num_outputs: int, report: list):
        self.lib = lib
        self.target_name = target_name
        self.inputs = inputs  # [(name, shape, dtype)]
        self.num_outputs = num_outputs
        self.report = report  # the per-layer records, as dicts
        self.machines = MachinePool(lib)

    def _arrays(self, args) -> list:
        if len(args) != len(self.inputs):
            names = ", ".join(n for n, _, _ in self.inputs)
            raise InputError(f"the model takes {len(self.inputs)} input(s) ({names}), got {len(args)}")
        out = []
        for value, (name, shape, dtype) in zip(args, self.inputs):
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            arr = np.ascontiguousarray(np.asarray(value))
            if tuple(arr.shape) != tuple(shape):
                raise InputError(f"input {name!r}: shape {tuple(arr.shape)} does not match the compiled shape "
                                 f"{tuple(shape)}; compile again with example_inputs of this shape")
            if arr.dtype != np.dtype(dtype):
                if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    raise InputError(f"input {name!r}: dtype {arr.dtype} cannot be used as {dtype}")
                arr = arr.astype(dtype)
            out.append(arr)
        return out

    def __call__(self, *args):
        import tvm

        args = [tvm.runtime.tensor(a, tvm.cpu()) for a in self._arrays(args)]
        with self.machines.checkout() as vm:
            outs = _flatten(vm["main"](*args))  # numpy copies, made before the VM serves another call
        return outs[0] if len(outs) == 1 else tuple(outs)


def _flatten(result) -> list:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    outs = []
    for item in result:
        outs.extend(_flatten(item))
    return outs


def load(path: str) -> LoadedModel:
    """The model ``CompiledModel.export(path)`` wrote (a ``.so`` and ``path + ".tvm_bnn.json"``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    meta_path = path + META_SUFFIX
    if not os.path.exists(meta_path):
        raise TvmBnnError(f"{meta_path!r} is missing: tvm_bnn.load needs the metadata written beside the library "
                          "by CompiledModel.export")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        inputs = [(str(n), tuple(int(d) for d in s), str(d_)) for n, s, d_ in meta["inputs"]]
        target, num_outputs, report = str(meta["target"]), int(meta["num_outputs"]), list(meta["report"])
        levels = meta.get("levels") or []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TvmBnnError(f"{meta_path!r}: the metadata written by CompiledModel.export is damaged "
                          f"({exc.__class__.__name__}: {exc}); export the model again") from exc
    if levels:  # choosing among ISA levels needs the host's CPU features: tvm_bnn.load does that
        raise TvmBnnError(f"{path!r} is a portable x86 library (one build per ISA level): load it with tvm_bnn.load, "
                          "or export it with portable=False for this loader")
    import tvm

    try:
        lib = tvm.runtime.load_module(path)
    except Exception as exc:  # noqa: BLE001 - TVM raises several kinds for a file that is not its library
        raise TvmBnnError(f"{path!r} is not a TVM runtime library for this machine ({str(exc).splitlines()[0]}); "
                          "export it again, or load it on the machine it was built for") from exc
    return LoadedModel(lib, target, inputs, num_outputs, report)
