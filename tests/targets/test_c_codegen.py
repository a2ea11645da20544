"""targets/c_codegen.py: the C it writes for TVM's "c" codegen, run on the host and a board against numpy."""
import numpy as np
from tvm import te, tirx

from tvm_bnn.schedules import lean
from tvm_bnn.targets.c_codegen import generate_c, harness_main, min_max_as_calls

from ..deploy.test_bare_metal_kernels import run_everywhere


def test_min_max_of_memory_reads_are_calls_that_read_after_the_store(tmp_path, rng):
    """A reduction's result read by a max/min after its update in the same loop body (a one-tap max-pool and a
    clip), inside a cast and a call: min_max_as_calls makes every max/min of a load a call, so each reads memory
    where it stands (TVM's C codegen reused an operand variable bound before the store); max/min of loop indices
    stay expressions."""
    x = rng.standard_normal(7).astype(np.float32)
    a = te.placeholder((7,), "float32", name="a")
    k = te.reduce_axis((0, 1), name="k")
    pool = te.compute((7,), lambda i: te.max(a[i + k], axis=k), name="pool")
    clip = lambda i: tirx.max(tirx.min(pool[i], 1.0), -1.0)  # noqa: E731
    scaled = lambda i: tirx.call_pure_extern("float32", "tvm_bnn_mla", tirx.const(0.0, "float32"), clip(i),  # noqa
                                             tirx.const(100.0, "float32"))
    out = te.compute((7,), lambda i: tirx.Cast("int32", scaled(i)) + tirx.Cast("int32", tirx.max(i, 3)), name="out")
    func = lean.inline_intermediates(te.create_prim_func([a, out]))  # as the bundle schedules it: one loop body
    mapped = min_max_as_calls(func).script()
    assert "tvm_bnn_max_float32" in mapped and "tvm_bnn_min_float32" in mapped
    assert "tvm_bnn_max_int32" not in mapped  # max(i, 3): no memory read
    src = generate_c({"kernel": func})
    main = harness_main(src, [("kernel", ["a", "out"] + ["s_" + p.name for p in src.kernels["kernel"].params[2:]])],
                        {"a": x}, ["out"])
    expected = (np.clip(x, -1, 1) * np.float32(100)).astype(np.int32) + np.maximum(np.arange(7), 3).astype(np.int32)
    run_everywhere(tmp_path, {"kernels.c": src.code, "main.c": main}, src.kernels["kernel"].params[1], expected)
