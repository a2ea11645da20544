"""Per-target TIR schedules for our kernels, and a default for the float layers a BNN keeps."""
from .apply import ScheduleKernels

__all__ = ["ScheduleKernels"]
