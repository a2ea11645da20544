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


def describe_library(path: str) -> str:
    """What ``tvm-bnn inspect model.so`` prints: the target, the levels it holds and which one this host gets,
    from the metadata alone (the library is not opened, so a library for another CPU can be inspected)."""
    from tvm_bnn.core.exported_library import read_metadata
    from tvm_bnn.errors import CPUFeatureError
    from tvm_bnn.targets import x86_host

    meta = read_metadata(path)
    lines = [f"library: {path}", f"target: {meta.target_name}"]
    try:
        host = x86_host.describe_host()
    except CPUFeatureError as exc:  # a bad TVM_BNN_X86_LEVEL
        host, chosen = f"unknown ({exc})", None
    options = [(v.level, v.required_features) for v in meta.variants]
    try:
        chosen = x86_host.choose_variant(options, meta.target_name)
        why = None
    except CPUFeatureError as exc:
        chosen, why = None, str(exc)
        if x86_host.is_x86_host() and x86_host.missing_features(options[-1][1]):
            why = (f"this CPU lacks {', '.join(x86_host.missing_features(options[-1][1]))}; compile for it with "
                   "--target x86, or as x86-portable")

    def cpu(v):
        t = v.target
        return " ".join(x for x in [t.get("mtriple", ""), t.get("mcpu", ""), ",".join(t.get("mattr", []))] if x)

    if meta.variants[0].level is not None:
        lines.append("levels (best first; each selected at load time from the host's CPU features):")
        for i, v in enumerate(meta.variants):
            mark = "  <- this host" if i == chosen else ""
            lines.append(f"  {v.level:7s} {cpu(v):34s} popcount: {x86_host.level(v.level).popcount}{mark}")
    else:
        v = meta.variants[0]
        lines.append(f"built for: {cpu(v) or 'unknown'}")
        needs = ", ".join(v.required_features)
        lines.append(f"needs CPU features: {needs or 'none checked (not x86 code)'}")
    lines.append(f"this host: {host}")
    if chosen is not None:
        v = meta.variants[chosen]
        lines.append(f"runs here: {'level ' + v.level if v.level else 'yes'}")
    else:
        lines.append(f"runs here: no: {why}")
    lines.append("")
    lines.append(str(meta.report))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tvm-bnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_compile = sub.add_parser("compile", help="compile a model (.onnx or torch.export .pt2) to a library")
    p_compile.add_argument("model")
    p_compile.add_argument("--target", default="x86",
                           help="x86 (default; a .so output is then x86-portable: every x86-64 ISA level, the best "
                                "chosen where it loads), x86-avx2 etc. for one CPU, aarch64, cortex-m4, ...")
    p_compile.add_argument("--no-portable", action="store_true",
                           help="with --target x86: a library for this CPU (and those with its features) only")
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
    p_inspect = sub.add_parser("inspect", help="print which layers would be binarized, without building; of a "
                                               "compiled .so: its target, ISA levels and the one this host gets")
    p_inspect.add_argument("model")
    p_inspect.add_argument("--input-shape", action="append")
    p_run = sub.add_parser("run", help="run a compiled library on .npy inputs")
    p_run.add_argument("library")
    p_run.add_argument("--input", action="append", required=True, help=".npy file of an input (repeat)")
    p_run.add_argument("--output", help="write the (first) output to this .npy file")
    p_run.add_argument("--level", help="of an x86-portable library: run this ISA level (avx512, avx2, popcnt, "
                                       "sse2), not the best this host has")
    args = parser.parse_args(argv)

    import tvm_bnn

    try:
        if args.command == "compile":
            target = args.target
            if target == "x86" and args.output.endswith(".so") and not args.no_portable:
                target = "x86-portable"  # what export writes for x86 anyway: build the levels once
            cm = tvm_bnn.compile(_load_model(args.model), target,
                                 example_inputs=_example_inputs(args.input_shape), tuning_db=args.tuning_db,
                                 require_binary=args.require_binary)
            print(cm.report)
            if args.no_portable and hasattr(cm, "levels"):
                cm.export(args.output, overwrite=args.force, portable=False)
            else:
                cm.export(args.output, overwrite=args.force)
            levels = getattr(cm, "levels", None)
            print(f"wrote {args.output}" + (f" (x86 levels {', '.join(levels)})" if levels else ""))
        elif args.command == "tune":
            from tvm_bnn.tuning import format_results

            results = tvm_bnn.tune(_load_model(args.model), args.target, _example_inputs(args.input_shape),
                                   trials=args.trials, work_dir=args.work_dir, rpc=args.rpc)
            print(format_results(results))
            print(f"database: {args.work_dir} (apply with: tvm-bnn compile ... --tuning-db {args.work_dir})")
        elif args.command == "inspect":
            if args.model.endswith(".so"):
                print(describe_library(args.model))
            else:
                _, _, report = tvm_bnn.analyse(_load_model(args.model), _example_inputs(args.input_shape))
                print(report)
        elif args.command == "run":
            cm = tvm_bnn.load(args.library, level=args.level)
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
