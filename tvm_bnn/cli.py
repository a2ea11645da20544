"""tvm-bnn: compile, inspect and run binarized models from a shell."""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _load_model(path: str):
    if path.endswith(".pt2"):
        import torch

        return torch.export.load(path)
    return path  # ONNX: read by the ONNX frontend, which reports a file that is not a model


def _example_inputs(shapes):
    """--input-shape 1,3,32,32 (one per input, in order) -> zero arrays that fix the compiled sizes."""
    if not shapes:
        return None
    out = []
    for text in shapes:
        try:
            out.append(np.zeros([int(d) for d in text.split(",")], np.float32))
        except ValueError:
            raise SystemExit(f"error: --input-shape {text!r}: expected comma-separated sizes such as 1,3,32,32")
    return tuple(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tvm-bnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_compile = sub.add_parser("compile", help="compile a model (.onnx or torch.export .pt2) to a library")
    p_compile.add_argument("model")
    p_compile.add_argument("--target", default="x86")
    p_compile.add_argument("-o", "--output", required=True,
                           help="output: a .so (TVM runtime library; cross-compiled for aarch64/armv7) for x86 and ARM "
                                "Linux, or a directory (the standalone C bundle) for cortex-m*, c and ARM Linux")
    p_compile.add_argument("--input-shape", action="append", help="sizes of an input, e.g. 1,3,32,32 (repeat)")
    p_compile.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p_compile.add_argument("--tuning-db", help="work dir of a previous 'tvm-bnn tune' whose schedules to apply")
    p_compile.add_argument("--require-binary", action="store_true",
                           help="fail if a layer with binary weights stays float (its activation not recognised)")
    p_tune = sub.add_parser("tune", help="autotune the model's kernels with MetaSchedule (resumable)")
    p_tune.add_argument("model")
    p_tune.add_argument("--target", default="x86")
    p_tune.add_argument("--trials", type=int, default=256, help="total trial budget (default 256)")
    p_tune.add_argument("--work-dir", default="tuning", help="where the JSON database and logs go")
    p_tune.add_argument("--rpc", help="measure on a board: tracker_host:tracker_port:device_key")
    p_tune.add_argument("--input-shape", action="append")
    p_inspect = sub.add_parser("inspect", help="print which layers would be binarized, without building")
    p_inspect.add_argument("model")
    p_inspect.add_argument("--input-shape", action="append")
    p_run = sub.add_parser("run", help="run a compiled library on .npy inputs")
    p_run.add_argument("library")
    p_run.add_argument("--input", action="append", required=True, help=".npy file of an input (repeat)")
    p_run.add_argument("--output", help="write the (first) output to this .npy file")
    args = parser.parse_args(argv)

    import tvm_bnn

    try:
        if args.command == "compile":
            cm = tvm_bnn.compile(_load_model(args.model), args.target,
                                 example_inputs=_example_inputs(args.input_shape), tuning_db=args.tuning_db,
                                 require_binary=args.require_binary)
            print(cm.report)
            cm.export(args.output, overwrite=args.force)
            print(f"wrote {args.output}")
        elif args.command == "tune":
            from tvm_bnn.tuning import format_results

            results = tvm_bnn.tune(_load_model(args.model), args.target, _example_inputs(args.input_shape),
                                   trials=args.trials, work_dir=args.work_dir, rpc=args.rpc)
            print(format_results(results))
            print(f"database: {args.work_dir} (apply with: tvm-bnn compile ... --tuning-db {args.work_dir})")
        elif args.command == "inspect":
            _, _, report = tvm_bnn.analyse(_load_model(args.model), _example_inputs(args.input_shape))
            print(report)
        elif args.command == "run":
            cm = tvm_bnn.load(args.library)
            outs = cm(*[np.load(p) for p in args.input])
            outs = outs if isinstance(outs, tuple) else (outs,)
            if args.output:
                np.save(args.output, outs[0])
            np.set_printoptions(threshold=50, precision=6, suppress=True)
            for i, out in enumerate(outs):
                print(f"output {i}: shape {out.shape} dtype {out.dtype}\n{out}")
    except (tvm_bnn.TvmBnnError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
