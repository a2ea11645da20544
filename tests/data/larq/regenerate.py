"""Regenerate the Larq (Keras) -> tf2onnx test models in this directory.

This script is NOT run by the test-suite and is not importable from tvm_bnn: it
needs TensorFlow + Larq, which tvm_bnn does not depend on. Run it with the
python of a separate virtual environment created OUTSIDE the repository:

    python3.11 -m venv /work/larq-env
    /work/larq-env/bin/pip install \
        tensorflow==2.16.2 tf-keras==2.16.0 \
        larq==0.14.0 larq-zoo==2.4.0 larq-compute-engine==0.16.0 \
        tf2onnx==1.17.0 onnx==1.17.0 onnxruntime==1.26.0 \
        numpy==1.26.4 protobuf==3.20.3
    /work/larq-env/bin/python tests/data/larq/regenerate.py            # small models
    /work/larq-env/bin/python tests/data/larq/regenerate.py --quicknet  # + QuickNet family

Why these versions: larq needs Keras 2 (tf.keras of TF <= 2.15, or the tf-keras
package with TF_USE_LEGACY_KERAS=1, which this script sets before importing
TensorFlow); larq-compute-engine 0.16.0 is built against TF 2.16 (its converter
still imports tensorflow.python.keras, present in 2.16); larq 0.14.0 needs
numpy < 2; larq-zoo 2.4.0 needs protobuf < 3.21. All of them share one env.

What it writes (default --out is the directory of this file):
  <name>.onnx   tf2onnx export, opset 13, NHWC input "x" of shape [1, H, W, C]
                (or [1, F] for the MLP), output "y".
  <name>.npz    x: the fixed random input; y: the Keras/larq output for x
                (model(x, training=False)); y_onnxruntime: onnxruntime's output for
                the .onnx file; y_lce: the output of the larq-compute-engine
                interpreter for LCE's conversion of the same Keras model.
  manifest.json one entry per model: shapes, the binary layers of the Keras
                model, what LCE's converter produced, what tf2onnx produced
                around every binary layer, and the numerical agreement.
With --quicknet it also exports larq_zoo's QuickNetSmall / QuickNet /
QuickNetLarge (weights=None, 224x224x3) to --big-out (default /work/larq-models,
outside the repo: 50-90 MB each) with an .npz beside each, and records their
counts in manifest.json under "quicknet_family".

The reference input x is a standard-normal draw; if onnxruntime does not reproduce
the Keras output for it to rounding error (a sign input within rounding of 0 that
TF and onnxruntime put on different sides), x is redrawn, up to 5 times; the
rejected draws are recorded in the manifest (agreement.x_draws_rejected_...).

Everything is deterministic: tf.keras.utils.set_random_seed(seed) before each
model is built, numpy RandomState(seed) for inputs and BatchNorm statistics, and
tf.keras.backend.clear_session() so that layer (hence ONNX node) names restart.

BatchNorm initialisation: every BatchNormalization layer first gets its moving
statistics set to the batch statistics of a random calibration batch (one
training-mode forward pass with momentum 0), then those are perturbed
(mean += 0.25*std*N(0,1), var *= U(0.5, 2)), gamma = U(0.5, 1.5) with a random
sign (about a quarter negative) and beta = N(0, 0.3). Conv/Dense biases (where
use_bias) are set to N(0, 0.3). This keeps sign inputs
balanced around 0 and makes exact zeros (which Keras' sign maps to +1 but which
a folded BN computes as +-eps) practically impossible.

Grouped convolutions: tf_keras runs Conv2D(groups>1) through an XLA-jit-compiled
tf.function, which tf2onnx 1.17 cannot convert (it leaves an unsupported
"PartitionedCall" node in the ONNX file). For the export only, the script
replaces that method on the layer instance by the plain convolution_op (same
numerics, checked); the patch is removed again before y is computed.

The .onnx files are tf2onnx's output except for names: shared (de-duplicated)
constants are renamed shared_const_<k> and tf2onnx's generated <base>__<counter>
names are renumbered in node order, because both vary from run to run otherwise.
With that, a re-run reproduces every file byte for byte.
"""

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import types

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import larq as lq  # noqa: E402
import larq_zoo as lqz  # noqa: E402
import larq_compute_engine as lce  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tf2onnx  # noqa: E402
from flatbuffers import flexbuffers  # noqa: E402
from larq.layers_base import _is_binary  # noqa: E402
from larq_compute_engine.mlir.python import tflite_schema  # noqa: E402
from larq_compute_engine.tflite.python.interpreter import Interpreter  # noqa: E402
from larq_zoo.sota.quicknet import QuickNetFactory  # noqa: E402
from onnx import numpy_helper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13

PINNED = {
    "tensorflow": "2.16.2",
    "tf-keras": "2.16.0",
    "larq": "0.14.0",
    "larq-zoo": "2.4.0",
    "larq-compute-engine": "0.16.0",
    "tf2onnx": "1.17.0",
    "onnx": "1.17.0",
    "onnxruntime": "1.26.0",
    "numpy": "1.26.4",
    "protobuf": "3.20.3",
}


def installed_versions():
    from importlib.metadata import version, PackageNotFoundError

    out = {}
    for name in PINNED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------
# model definitions
# --------------------------------------------------------------------------

BIN = dict(kernel_constraint="weight_clip", use_bias=False)


def _stem(x, filters=24):
    """Float first conv on the image, as real BNNs have."""
    x = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name="stem_conv")(x)
    return tf.keras.layers.BatchNormalization(name="stem_bn")(x)


def _plain_cnn(iq, kq, dense_kq=None):
    """stem -> QConv(40, s1) -> BN -> QConv(70, s2) -> BN -> GAP -> QDense(10)."""
    inp = tf.keras.Input((16, 16, 3), name="x")
    x = _stem(inp)
    x = lq.layers.QuantConv2D(40, 3, padding="same", input_quantizer=iq, kernel_quantizer=kq, **BIN)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(70, 3, strides=2, padding="same", input_quantizer=iq, kernel_quantizer=kq, **BIN)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = lq.layers.QuantDense(
        10, input_quantizer=iq, kernel_quantizer=dense_kq or kq, kernel_constraint="weight_clip", name="y"
    )(x)
    return tf.keras.Model(inp, x)


def build_ste_sign():
    return _plain_cnn("ste_sign", "ste_sign")


def build_approx_sign():
    return _plain_cnn("approx_sign", "ste_sign")


def build_magnitude_aware():
    return _plain_cnn("ste_sign", "magnitude_aware_sign")


def build_one_padding():
    inp = tf.keras.Input((16, 16, 3), name="x")
    x = _stem(inp)
    q = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", **BIN)
    x = lq.layers.QuantConv2D(40, 3, strides=1, padding="same", pad_values=1.0, **q)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(50, 3, strides=2, padding="same", pad_values=1.0, **q)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(24, 3, strides=1, padding="same", pad_values=1.0, **q)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = lq.layers.QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                             kernel_constraint="weight_clip", name="y")(x)
    return tf.keras.Model(inp, x)


def build_grouped():
    inp = tf.keras.Input((16, 16, 3), name="x")
    x = _stem(inp)
    q = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", **BIN)
    # 24 -> 64 in 4 groups: 6 input channels per group (LCE: rejected, not a multiple of 32)
    x = lq.layers.QuantConv2D(64, 3, padding="same", groups=4, **q)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    # 64 -> 40 in 2 groups: 32 input channels per group (LCE: accepted), one-padding
    x = lq.layers.QuantConv2D(40, 3, padding="same", pad_values=1.0, groups=2, **q)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = lq.layers.QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                             kernel_constraint="weight_clip", name="y")(x)
    return tf.keras.Model(inp, x)


def build_quicknet_block():
    """Stem, 2 QuickNet residual blocks, a transition block, 1 residual block and
    QuickNet's float top, using larq_zoo's own QuickNetFactory block methods
    (residual_block: ste_sign(clip 1.25) input, ste_sign kernel, one-padding,
    ReLU inside the conv, BN(momentum .9, eps 1e-5), residual add)."""
    cfg = types.SimpleNamespace(
        input_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_constraint=lq.constraints.WeightClip(clip_value=1.25),
    )
    inp = tf.keras.Input((16, 16, 3), name="x")
    x = _stem(inp)
    x = QuickNetFactory.residual_block(cfg, x)
    x = QuickNetFactory.residual_block(cfg, x)
    x = QuickNetFactory.transition_block(cfg, x, 40, strides=2)
    x = QuickNetFactory.residual_block(cfg, x)
    x = tf.keras.layers.Activation("relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = lq.layers.QuantDense(10, kernel_initializer="glorot_normal", name="y")(x)
    return tf.keras.Model(inp, x)


def build_dense_only():
    inp = tf.keras.Input((70,), name="x")
    x = tf.keras.layers.Dense(48, name="first_dense")(inp)
    x = tf.keras.layers.BatchNormalization()(x)
    q = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    x = lq.layers.QuantDense(40, use_bias=False, **q)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantDense(24, use_bias=False, **q)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantDense(10, name="y", **q)(x)
    return tf.keras.Model(inp, x)


SMALL_MODELS = {
    "ste_sign": (build_ste_sign, "QuantConv2D/QuantDense with input_quantizer=ste_sign, kernel_quantizer=ste_sign, "
                 "zero 'same' padding (stride 1 and stride 2)"),
    "approx_sign": (build_approx_sign, "as ste_sign but input_quantizer=approx_sign"),
    "magnitude_aware": (build_magnitude_aware, "as ste_sign but kernel_quantizer=magnitude_aware_sign (Bi-Real), "
                        "also on the QuantDense"),
    "one_padding": (build_one_padding, "QuantConv2D padding='same', pad_values=1.0 (QuickNet/LCE style), "
                    "stride 1, 2, 1, kernel 3 (40 -> 50 -> 24 channels)"),
    "grouped": (build_grouped, "binary QuantConv2D with groups=4 (6 in-ch/group, zero pad) and groups=2 "
                "(32 in-ch/group, one-padding)"),
    "quicknet_block": (build_quicknet_block, "larq_zoo QuickNetFactory.residual_block x2, transition_block, "
                       "residual_block, float QuantDense top"),
    "dense_only": (build_dense_only, "binary MLP: float Dense -> BN -> 3 x (QuantDense ste_sign/ste_sign) with BN between"),
}

QUICKNET_FAMILY = {
    "quicknet_small": lqz.sota.QuickNetSmall,
    "quicknet": lqz.sota.QuickNet,
    "quicknet_large": lqz.sota.QuickNetLarge,
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def randomize_batchnorm(model, rng, calib):
    bns = [l for l in model.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(calib, training=True)  # moving stats := batch stats of calib
    for bn, m in zip(bns, saved):
        bn.momentum = m
    n_neg = 0
    for bn in bns:
        mean = bn.moving_mean.numpy()
        var = bn.moving_variance.numpy()
        c = mean.shape[0]
        std = np.sqrt(var + 1e-6)
        bn.moving_mean.assign((mean + 0.25 * std * rng.standard_normal(c)).astype(np.float32))
        bn.moving_variance.assign((var * rng.uniform(0.5, 2.0, c) + 1e-4).astype(np.float32))
        if bn.scale:
            sgn = np.where(rng.uniform(size=c) < 0.25, -1.0, 1.0)
            n_neg += int((sgn < 0).sum())
            bn.gamma.assign((sgn * rng.uniform(0.5, 1.5, c)).astype(np.float32))
        if bn.center:
            bn.beta.assign((0.3 * rng.standard_normal(c)).astype(np.float32))
    # non-zero biases (Keras initialises them to 0, which TF's grappler then folds away)
    for l in model.layers:
        b = getattr(l, "bias", None)
        if getattr(l, "use_bias", False) and b is not None:
            b.assign((0.3 * rng.standard_normal(b.shape)).astype(np.float32))
    return len(bns), n_neg


def quantizer_name(q):
    if q is None:
        return None
    if isinstance(q, lq.quantizers.Quantizer):
        cfg = q.get_config()
        extra = {k: v for k, v in cfg.items() if k in ("clip_value",)}
        return type(q).__name__ + (f"({extra})" if extra else "")
    return getattr(q, "__name__", str(q))


def keras_binary_layers(model):
    out = []
    for l in model.layers:
        if not isinstance(l, (lq.layers.QuantConv2D, lq.layers.QuantDense)):
            continue
        iq, kq = l.input_quantizer, l.kernel_quantizer
        if not (_is_binary(iq) and _is_binary(kq)):
            continue
        d = dict(name=l.name, cls=type(l).__name__, input_quantizer=quantizer_name(iq),
                 kernel_quantizer=quantizer_name(kq), use_bias=bool(l.use_bias),
                 in_features=int(l.input.shape[-1]))
        if isinstance(l, lq.layers.QuantConv2D):
            d.update(filters=l.filters, kernel_size=list(l.kernel_size), strides=list(l.strides),
                     padding=l.padding, pad_values=float(l.pad_values), groups=l.groups)
        else:
            d.update(units=l.units)
        out.append(d)
    return out


def sign_inputs_stats(model, x):
    """min |v| over the inputs of all binary layers' input quantizers."""
    layers = [l for l in model.layers if isinstance(l, (lq.layers.QuantConv2D, lq.layers.QuantDense))
              and _is_binary(l.input_quantizer)]
    if not layers:
        return None
    sub = tf.keras.Model(model.inputs, [l.input for l in layers])
    vals = sub(x, training=False)
    if not isinstance(vals, (list, tuple)):
        vals = [vals]
    a = np.concatenate([np.abs(v.numpy()).ravel() for v in vals])
    return dict(count=int(a.size), min_abs=float(a.min()), n_below_1e_4=int((a < 1e-4).sum()),
                n_exact_zero=int((a == 0).sum()))


@contextlib.contextmanager
def capture_fd2():
    """Capture C++-level stderr (the MLIR converter prints its diagnostics there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        box = []
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            box.append(f.read().decode(errors="replace"))


_BUILTIN_NAMES = {v: k for k, v in vars(tflite_schema.BuiltinOperator).items() if not k.startswith("_")}
_TFL_NP = {0: np.float32, 2: np.int32, 9: np.int8, 3: np.uint8, 4: np.int64}


def tflite_ops(fb):
    """Op list of a .tflite flatbuffer, read with the flatbuffers tflite schema that LCE ships
    (larq_compute_engine.mlir.python.tflite_schema): for every operator of every subgraph,
    its OperatorCode's custom_code (LceBconv2d, LceQuantize, ...) or builtin name."""
    m = tflite_schema.Model.GetRootAsModel(fb, 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        cc = oc.CustomCode()
        codes.append(cc.decode() if cc else _BUILTIN_NAMES[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())])
    ops = []
    for s in range(m.SubgraphsLength()):
        sg = m.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            name = codes[op.OpcodeIndex()]
            d = {"op": name, "subgraph": s}
            if name.startswith("Lce") and op.CustomOptionsLength():
                d["options"] = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
            if name == "FULLY_CONNECTED":
                t = sg.Tensors(op.Inputs(1))
                buf = m.Buffers(t.Buffer()).DataAsNumpy()
                if isinstance(buf, np.ndarray) and t.Type() in _TFL_NP:
                    w = buf.view(_TFL_NP[t.Type()])
                    d["weights"] = dict(shape=t.ShapeAsNumpy().tolist(), dtype=np.dtype(_TFL_NP[t.Type()]).name,
                                        all_plus_minus_one=bool(np.all(np.abs(w) == 1)))
            ops.append(d)
    return ops


def lce_convert(model, x):
    with capture_fd2() as box:
        fb = lce.convert_keras_model(model)
    msgs = [ln.strip() for ln in box[0].splitlines() if "error:" in ln or "warning:" in ln]
    ops = tflite_ops(fb)
    counts = {}
    for o in ops:
        counts[o["op"]] = counts.get(o["op"], 0) + 1
    bconv = [o.get("options", {}) for o in ops if o["op"] == "LceBconv2d"]
    lce_ops = sorted({o["op"] for o in ops if o["op"].startswith("Lce")})
    fc = [o for o in ops if o["op"] == "FULLY_CONNECTED"]
    try:
        with capture_fd2():
            it, interp = Interpreter(fb), "default (optimized) kernels"
    except RuntimeError:
        # the optimized LceBconv2d kernel rejects grouped convolutions; the reference kernel runs them
        it, interp = Interpreter(fb, use_reference_bconv=True), "use_reference_bconv=True"
    y_lce = np.asarray(it.predict(x))
    return fb, dict(
        n_LceBconv2d=len(bconv),
        # any Lce custom op other than bconv / (de)quantize / binary maxpool would be a binary dense op
        n_binary_dense_ops=sum(1 for o in ops if o["op"].startswith("Lce") and o["op"] not in
                               ("LceBconv2d", "LceQuantize", "LceDequantize", "LceBMaxPool2d")),
        lce_custom_ops_present=lce_ops,
        op_counts=counts,
        op_sequence=[o["op"] for o in ops],
        bconv_options=bconv,
        fully_connected=[o.get("weights") for o in fc],
        converter_diagnostics=sorted(set(msgs)),
        flatbuffer_bytes=len(fb),
        interpreter=interp,
    ), y_lce


# ---------------------------- ONNX inspection ------------------------------

def _attrs(n):
    return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}


def _jsonable(v):
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, (list, tuple)):
        return [_jsonable(i) for i in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _small_const(inits, name):
    if name in inits and inits[name].size <= 8:
        return inits[name].tolist()
    return None


def _describe(n, inits):
    a = {k: _jsonable(v) for k, v in _attrs(n).items()}
    consts = {}
    for i, name in enumerate(n.input):
        c = _small_const(inits, name)
        if c is not None:
            consts[i] = c
    d = {"op": n.op_type}
    if a:
        d["attrs"] = a
    if consts:
        d["const_inputs"] = consts
    return d


def classify_weight(w, out_axis):
    """'sign' (all +-1), 'per_out_channel_scaled_sign' (|w| constant per output channel), or 'float'."""
    a = np.abs(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1))
    if np.all(a == 1):
        return "sign", None
    mx, mn = a.max(1), a.min(1)
    if np.all(mx - mn <= 1e-6 * np.maximum(mx, 1e-30)) and np.all(mn > 0):
        return "per_out_channel_scaled_sign", dict(scale_min=float(mn.min()), scale_max=float(mx.max()))
    return "float", None


def onnx_binary_sites(mp, binary_layer_names, model_name):
    g = mp.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def data_input(n):
        ins = [i for i in n.input if i and i not in inits]
        return ins[0] if ins else None

    sites = []
    for lname in binary_layer_names:
        prefix = f"{model_name}/{lname}/"
        nodes = [n for n in g.node if n.name.startswith(prefix) and n.op_type in ("Conv", "MatMul", "Gemm")]
        if not nodes:
            sites.append({"keras_layer": lname, "onnx_node": None})
            continue
        n = nodes[0]
        # walk back through layout ops, padding and the input quantizer Sign(Add(Sign(x), 0.1))
        chain, cur, seen_sign = [], producer.get(n.input[0]), 0
        passthrough = ("Transpose", "Pad", "Squeeze", "Reshape", "Identity")
        while cur is not None and len(chain) < 8:
            op = cur.op_type
            if seen_sign >= 2:  # quantizer complete: include at most one layout op before it
                if op in ("Transpose", "Squeeze", "Reshape", "Identity"):
                    chain.insert(0, _describe(cur, inits))
                    cur = producer.get(data_input(cur))
                break
            quant_add = op == "Add" and any(i in inits and inits[i].size == 1 for i in cur.input)
            if op == "Sign" or quant_add or op in passthrough:
                chain.insert(0, _describe(cur, inits))
                seen_sign += op == "Sign"
                cur = producer.get(data_input(cur))
            else:
                break
        source = cur.op_type if cur is not None else "graph input"
        # weight
        wname = n.input[1]
        wd = {"name": wname}
        if wname in inits:
            w = inits[wname]
            trans_b = n.op_type == "Gemm" and _attrs(n).get("transB", 0)
            kind, extra = classify_weight(w, 0 if (n.op_type == "Conv" or trans_b) else 1)
            wd.update(initializer=True, shape=list(w.shape), kind=kind)
            if extra:
                wd.update(extra)
        else:
            p = producer.get(wname)
            wd.update(initializer=False, produced_by=p.op_type if p else None)
        site = {"keras_layer": lname, "onnx_node": n.name, "op": _describe(n, inits),
                "weight": wd, "input_from": source, "input_chain": chain}
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
            b = inits.get(n.input[2])
            site["bias"] = {"name": n.input[2], "initializer": b is not None,
                            "all_zero": bool(np.all(b == 0)) if b is not None else None}
        # what follows
        after, cur = [], n
        for _ in range(4):
            cs = consumers.get(cur.output[0], [])
            if len(cs) != 1:
                if cs:
                    after.append({"fanout": [c.op_type for c in cs]})
                break
            cur = cs[0]
            after.append(_describe(cur, inits))
            if cur.op_type in ("Sign", "Conv", "MatMul", "GlobalAveragePool"):
                break
        site["followed_by"] = after
        sites.append(site)
    return sites


def canonicalize_shared_constants(mp):
    """tf2onnx merges equal constants (e.g. the 0.1 of every sign, the pads of every
    one-padded conv) into one initializer but which of the equal constants' names survives,
    and the initializer order, vary from run to run. Rename every initializer read by more
    than one node to shared_const_<k> (k in order of first use) and order the initializers by
    first use, so that the files are byte-identical across runs. Nothing else is changed."""
    g = mp.graph
    users, first_use = {}, {}
    for idx, n in enumerate(g.node):
        for i in n.input:
            users[i] = users.get(i, 0) + 1
            first_use.setdefault(i, idx)
    shared = sorted((i.name for i in g.initializer if users.get(i.name, 0) > 1),
                    key=lambda nm: (first_use[nm], nm))
    ren = {old: f"shared_const_{k}" for k, old in enumerate(shared)}
    for init in g.initializer:
        init.name = ren.get(init.name, init.name)
    for n in g.node:
        for j, i in enumerate(n.input):
            if i in ren:
                n.input[j] = ren[i]
    order = {ren.get(k, k): v for k, v in first_use.items()}
    inits = sorted(g.initializer, key=lambda t: (order.get(t.name, 1 << 30), t.name))
    inits = [onnx.TensorProto.FromString(t.SerializeToString()) for t in inits]
    del g.initializer[:]
    g.initializer.extend(inits)
    return ren


_GEN_NAME = re.compile(r"^(.*?__)(\d+)(:\d+)?$")


def canonicalize_generated_names(mp):
    """tf2onnx names the nodes it creates <base>__<counter> (Transpose__136, pad_const__14,
    model/conv2d/Conv2D__6, ...); the counters depend on optimizer order and vary between runs.
    Renumber them in order of first appearance in the (deterministic) node list."""
    g = mp.graph
    stems = {}

    def new_name(name):
        m = _GEN_NAME.match(name)
        if not m:
            return name
        stem = m.group(1) + m.group(2)
        if stem not in stems:
            stems[stem] = f"{m.group(1)}{len(stems)}"
        return stems[stem] + (m.group(3) or "")

    for n in g.node:
        n.name = new_name(n.name)
        n.input[:] = [new_name(i) for i in n.input]
        n.output[:] = [new_name(o) for o in n.output]
    for t in g.initializer:
        t.name = new_name(t.name)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = new_name(vi.name)


def export_onnx(model, path, x):
    spec = (tf.TensorSpec(x.shape, tf.float32, name="x"),)
    mp, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    canonicalize_shared_constants(mp)
    canonicalize_generated_names(mp)
    onnx.checker.check_model(mp)
    onnx.save(mp, path)
    return mp


def process(name, builder, desc, out_dir, seed, input_batch=1, calib_batch=4, max_x_draws=5):
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.RandomState(seed)
    model = builder()
    in_shape = [input_batch] + [int(d) for d in model.input_shape[1:]]
    calib = rng.standard_normal([calib_batch] + in_shape[1:]).astype(np.float32)
    n_bn, n_neg = randomize_batchnorm(model, rng, calib)
    bin_layers = keras_binary_layers(model)

    # tf2onnx (grouped convs: bypass the XLA-jitted tf.function for the export only,
    # see module docstring; the patch is removed again before y is computed)
    notes, patched = [], []
    for l in model.layers:
        if isinstance(l, tf.keras.layers.Conv2D) and l.groups > 1:
            l._jit_compiled_convolution_op = l.convolution_op
            patched.append(l)
            notes.append(f"{l.name}: groups={l.groups}; _jit_compiled_convolution_op replaced by convolution_op "
                         "for export (unpatched, tf2onnx emits an unsupported PartitionedCall node)")
    onnx_path = os.path.join(out_dir, f"{name}.onnx")
    mp = export_onnx(model, onnx_path, np.zeros(in_shape, np.float32))
    probe = rng.standard_normal(in_shape).astype(np.float32)
    y_patched = model(probe, training=False).numpy()
    for l in patched:
        del l._jit_compiled_convolution_op
    if patched:
        y_unpatched = model(probe, training=False).numpy()
        notes.append(f"patched vs unpatched Keras model on a probe input: max abs diff "
                     f"{float(np.abs(y_patched - y_unpatched).max())}")

    # The reference input: a standard-normal draw. A sign input within float rounding of 0
    # can come out on different sides in TF and in onnxruntime, which changes everything
    # downstream; such an x is a knife-edge reference. Redraw (up to max_x_draws times)
    # until onnxruntime reproduces the Keras output to rounding error.
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    rejected = []
    for attempt in range(max_x_draws):
        x = rng.standard_normal(in_shape).astype(np.float32)
        y = model(x, training=False).numpy()
        y_ort = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        d = float(np.abs(y_ort - y).max())
        if d <= 1e-6 + 1e-4 * float(np.abs(y).max()):
            break
        rejected.append(d)
    sstats = sign_inputs_stats(model, x)

    # LCE (on the unpatched Keras model)
    _, lce_info, y_lce = lce_convert(model, x)
    lce_info["max_abs_diff_vs_keras"] = float(np.abs(y_lce - y).max())

    op_counts = {}
    for n in mp.graph.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    sites = onnx_binary_sites(mp, [b["name"] for b in bin_layers], model.name)
    npz_path = os.path.join(out_dir, f"{name}.npz")
    np.savez_compressed(npz_path, x=x, y=y, y_onnxruntime=y_ort, y_lce=y_lce.reshape(y.shape))
    entry = dict(
        name=name,
        description=desc,
        onnx=os.path.basename(onnx_path),
        npz=os.path.basename(npz_path),
        onnx_bytes=os.path.getsize(onnx_path),
        opset=[{"domain": o.domain or "ai.onnx", "version": o.version} for o in mp.opset_import],
        input_name=sess.get_inputs()[0].name,
        input_shape=in_shape,
        input_layout="NHWC" if len(in_shape) == 4 else "NF",
        output_name=sess.get_outputs()[0].name,
        output_shape=list(y.shape),
        seed=seed,
        batchnorm=dict(count=n_bn, negative_gamma_channels=n_neg),
        keras=dict(n_binary_layers=len(bin_layers),
                   n_binary_conv=sum(b["cls"] == "QuantConv2D" for b in bin_layers),
                   n_binary_dense=sum(b["cls"] == "QuantDense" for b in bin_layers),
                   binary_layers=bin_layers,
                   n_params=int(model.count_params())),
        sign_inputs=sstats,
        lce=lce_info,
        onnx_graph=dict(op_counts=op_counts, op_sequence=[n.op_type for n in mp.graph.node],
                        binary_sites=sites, export_notes=notes),
        agreement=dict(max_abs_y=float(np.abs(y).max()),
                       x_draws_rejected_onnxruntime_max_abs_diff=rejected,
                       onnxruntime_max_abs_diff=float(np.abs(y_ort - y).max()),
                       lce_max_abs_diff=lce_info["max_abs_diff_vs_keras"]),
    )
    return entry


def _site_pattern(site):
    def fmt(d):
        if "op" not in d:
            return str(d)
        out = d["op"]
        a = {k: v for k, v in d.get("attrs", {}).items() if k != "dilations"}
        if a:
            out += json.dumps(a, sort_keys=True)
        if "const_inputs" in d:
            out += " const" + json.dumps(d["const_inputs"], sort_keys=True)
        return out

    return " | ".join([
        "from " + site["input_from"],
        " -> ".join(fmt(c) for c in site["input_chain"]),
        fmt(site["op"]) + " W:" + str(site["weight"].get("kind")) + (" +bias" if "bias" in site else ""),
        "then " + " -> ".join(fmt(c) for c in site["followed_by"]),
    ])


def _count(items):
    out = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return [{"count": c, "value": json.loads(k) if k.startswith("{") else k} for k, c in out.items()]


def summarize_big_entry(e):
    """Keep the repo manifest small: for the QuickNet family, replace per-layer lists by
    counts of distinct entries."""
    e = json.loads(json.dumps(e, default=_jsonable))
    e["onnx_graph"].pop("op_sequence", None)
    e["lce"].pop("op_sequence", None)
    sites = e["onnx_graph"].pop("binary_sites")
    e["onnx_graph"]["binary_site_patterns"] = _count(_site_pattern(s) for s in sites)
    e["lce"]["bconv_options"] = _count(json.dumps(o, sort_keys=True) for o in e["lce"]["bconv_options"])
    bl = e["keras"].pop("binary_layers")
    e["keras"]["binary_layer_kinds"] = _count(
        json.dumps({k: v for k, v in b.items() if k != "name"}, sort_keys=True) for b in bl)
    return e


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE, help="where the small models go (default: this directory)")
    ap.add_argument("--only", nargs="*", help="subset of small model names")
    ap.add_argument("--quicknet", action="store_true", help="also export QuickNetSmall/QuickNet/QuickNetLarge")
    ap.add_argument("--only-quicknet", action="store_true", help="only the QuickNet family")
    ap.add_argument("--big-out", default="/work/larq-models", help="where the QuickNet family goes")
    args = ap.parse_args()

    vers = installed_versions()
    bad = {k: (v, PINNED[k]) for k, v in vers.items() if v != PINNED[k]}
    if bad:
        print("WARNING: versions differ from the pinned ones (installed, pinned):", bad, file=sys.stderr)

    man_path = os.path.join(args.out, "manifest.json")
    manifest = {}
    if os.path.exists(man_path):
        with open(man_path) as f:
            manifest = json.load(f)
    manifest["generator"] = "tests/data/larq/regenerate.py"
    manifest["versions"] = vers
    manifest["tf2onnx_opset"] = OPSET
    manifest["lce_op_count_method"] = (
        "parse the flatbuffer returned by larq_compute_engine.convert_keras_model with the tflite "
        "flatbuffers schema bundled in larq_compute_engine.mlir.python.tflite_schema; an op is "
        "LceBconv2d when its OperatorCode.custom_code == b'LceBconv2d' (options decoded with "
        "flatbuffers.flexbuffers). Cross-checked with tf.lite.experimental.Analyzer.")
    manifest.setdefault("models", {})

    if not args.only_quicknet:
        names = args.only or list(SMALL_MODELS)
        for i, name in enumerate(SMALL_MODELS):
            if name not in names:
                continue
            builder, desc = SMALL_MODELS[name]
            print(f"== {name}", flush=True)
            e = process(name, builder, desc, args.out, seed=1000 + i)
            manifest["models"][name] = e
            print(f"   onnx {e['onnx_bytes']} B, keras binary {e['keras']['n_binary_layers']}, "
                  f"LceBconv2d {e['lce']['n_LceBconv2d']}, ort diff {e['agreement']['onnxruntime_max_abs_diff']:.3g}, "
                  f"lce diff {e['agreement']['lce_max_abs_diff']:.3g}", flush=True)
            if e["onnx_bytes"] > 200_000:
                print(f"WARNING: {name}.onnx is larger than 200 KB", file=sys.stderr)

    if args.quicknet or args.only_quicknet:
        os.makedirs(args.big_out, exist_ok=True)
        fam = manifest.setdefault("quicknet_family", {})
        for i, (name, fn) in enumerate(QUICKNET_FAMILY.items()):
            print(f"== {name}", flush=True)
            builder = (lambda fn=fn: fn(weights=None, input_shape=(224, 224, 3)))
            e = process(name, builder, f"larq_zoo.sota.{fn.__name__}(weights=None, input_shape=(224, 224, 3))",
                        args.big_out, seed=2000 + i, calib_batch=2)
            e["location"] = os.path.abspath(args.big_out)
            fam[name] = summarize_big_entry(e)
            print(f"   onnx {e['onnx_bytes']} B, keras binary {e['keras']['n_binary_layers']}, "
                  f"LceBconv2d {e['lce']['n_LceBconv2d']}, ort diff {e['agreement']['onnxruntime_max_abs_diff']:.3g}, "
                  f"lce diff {e['agreement']['lce_max_abs_diff']:.3g}", flush=True)

    with open(man_path, "w") as f:
        json.dump(manifest, f, indent=1, default=_jsonable)
        f.write("\n")
    print("wrote", man_path)


if __name__ == "__main__":
    main()
