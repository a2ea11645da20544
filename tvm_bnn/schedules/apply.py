"""ScheduleKernels: schedule every PrimFunc of a module for the target, before TIR lowering."""
import tvm
from tvm import tirx

from ..passes.kernels import is_kernel
from . import generic, x86


def ScheduleKernels(spec):  # noqa: N802 - TVM pass naming
    num_cores = int(spec.target.attrs.get("num-cores", 1))

    @tvm.transform.module_pass(opt_level=0, name="tvm_bnn.ScheduleKernels")
    def _pass(mod, _ctx):
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and func.attrs.get("tirx.is_scheduled")):
                continue  # not TIR, or already scheduled from a tuning database
            if is_kernel(func):
                new = x86.schedule_kernel(func, str(func.attrs["tvm_bnn.op"]), num_cores, spec.target)
            else:
                new = generic.schedule_generic(func, num_cores, spec.target)
            updates[gvar] = new
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass
