"""What every backend builds and what a backend is: the CompiledModel interface, documented once, and Backend."""
from __future__ import annotations

from ..errors import TvmBnnError
from ..report import Report


class CompiledModel:
    """A compiled model: call it like a function; ``report`` says what was binarized.

    Every backend's model has this interface:

    * ``cm(*inputs)``: one numpy array or torch tensor per model input, checked (count, shape, a dtype that casts
      safely) -> a numpy array, or a tuple of them when the model has several outputs;
    * ``cm.report``: per conv2d/dense layer, binarized or not and why (:class:`tvm_bnn.report.Report`);
    * ``cm.export(path, overwrite=False)``: the deployable artefact (a TVM runtime library ``.so`` with its
      metadata, or a directory of C), never overwriting unless told; returns the path;
    * ``cm.time(*inputs)``: median seconds per call, for a model that runs natively here;
    * ``cm.stats``: flash, RAM and instructions per inference, for a model that runs on an emulated board;
    * ``cm.profile()``: where the time goes, per kernel.

    A measurement the backend cannot make raises :class:`tvm_bnn.TvmBnnError` saying which one it can.
    ``target_name``, ``inputs`` ([(name, shape, dtype)]) and ``num_outputs`` say what it was compiled for.
    """

    def __init__(self, target_name: str, inputs: list, num_outputs: int, report: Report):
        self.target_name = target_name
        self.inputs = inputs  # [(name, shape, dtype)]
        self.num_outputs = num_outputs
        self.report = report

    def __call__(self, *args):
        raise NotImplementedError

    def export(self, path: str, overwrite: bool = False) -> str:
        raise NotImplementedError

    def time(self, *args, number: int = 10, repeat: int = 5) -> float:
        raise TvmBnnError(f"target {self.target_name!r} runs under emulation, so it has no wall-clock time; "
                          "use stats (instructions per inference on the emulated board)")

    @property
    def stats(self):
        raise TvmBnnError(f"target {self.target_name!r} runs natively here; use time() and profile()")

    def profile(self, number: int = 5, repeat: int = 3):
        raise TvmBnnError(f"target {self.target_name!r} runs under emulation: no per-kernel timing; per-call "
                          "instruction counts: cm.bundle.run_board(x, board, per_call=True) (Cortex-M), "
                          "cm.bundle.count_instructions(x, per_call=True) (aarch64)")

    def __repr__(self):
        return (f"<tvm_bnn.{type(self).__name__} target={self.target_name} "
                f"inputs={[(n, s) for n, s, _ in self.inputs]} "
                f"binarized {self.report.num_binarized}/{len(self.report)} layers>")


class Backend:
    """Builds a CompiledModel for one target family from what the model pipeline (``core.pipeline.analyse``)
    gave. ``tvm_bnn.backends.BACKENDS`` chooses one by ``TargetSpec.family``."""

    def check(self, spec, tuning_db: str | None) -> None:
        """Fail before the import and passes (which take a while) for what can be told from the arguments: a
        missing toolchain, an option this backend takes none of."""

    def build(self, spec, analysed, tuning_db: str | None) -> CompiledModel:
        """``analysed``: the ``core.pipeline.AnalysedModel`` of the model; ``spec``: its resolved target."""
        raise NotImplementedError
