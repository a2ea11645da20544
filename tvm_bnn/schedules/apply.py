"""ScheduleKernels: schedule every PrimFunc of a module for the target, before TIR lowering."""
import tvm
from tvm import tirx

from ..passes.kernels import is_kernel
from . import generic, x86


def default_schedule(func: tirx.PrimFunc, spec) -> tirx.PrimFunc:
    """Our untuned schedule of one PrimFunc: the x86 kernel schedules for our operators, float_x86 for the rest."""
    num_cores = int(spec.target.attrs.get("num-cores", 1))
    if is_kernel(func):
        return x86.schedule_kernel(func, str(func.attrs["tvm_bnn.op"]), num_cores, spec.target)
    return generic.schedule_generic(func, num_cores, spec.target)


def ScheduleKernels(spec):  # noqa: N802 - TVM pass naming
    @tvm.transform.module_pass(opt_level=0, name="tvm_bnn.ScheduleKernels")
    def _pass(mod, _ctx):
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and func.attrs.get("tirx.is_scheduled")):
                continue  # not TIR, or already scheduled from a tuning database
            updates[gvar] = default_schedule(func, spec)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass
