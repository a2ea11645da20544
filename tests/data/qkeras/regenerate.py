"""Regenerate the QKeras -> tf2onnx test models in this directory.

This script is NOT run by the test-suite and is not importable from tvm_bnn: it
needs TensorFlow + QKeras, which tvm_bnn does not depend on. Run it with the
python of a separate virtual environment created OUTSIDE the repository:

    python3.11 -m venv /work/qkeras-env
    /work/qkeras-env/bin/pip install \
        tensorflow-cpu==2.15.1 tensorflow-model-optimization==0.7.5 \
        tf2onnx==1.16.1 onnx==1.17.0 onnxruntime==1.26.0 \
        numpy==1.26.4 protobuf==3.20.3 \
        pyparsing scipy scikit-learn tqdm networkx
    /work/qkeras-env/bin/pip install --no-deps qkeras==0.9.0
    /work/qkeras-env/bin/python tests/data/qkeras/regenerate.py

Why these versions: QKeras 0.9.0 imports tensorflow.python.keras and
tensorflow_model_optimization, so it needs Keras 2 as tf.keras, i.e. TF <= 2.15.
tensorflow-model-optimization 0.7.5 is the last release that does not pull in
tf-keras (0.8.x does, and with it the full "tensorflow" wheel next to
tensorflow-cpu). qkeras is installed with --no-deps because its metadata asks for
"pyparser" (an unrelated package; the code imports pyparsing) and for keras-tuner
(only used by qkeras.autoqkeras, which this script does not import). tf2onnx 1.16.1
requires protobuf~=3.20; numpy < 2 for TF 2.15.

What it writes (default --out is the directory of this file):
  <name>.onnx   tf2onnx export, opset 13, input "x" (NHWC [1, 16, 16, 3]; NCHW
                [1, 3, 16, 16] for the model exported with inputs_as_nchw), output "y".
  <name>.npz    x: the fixed random input, in the layout of the ONNX input;
                y: the Keras output for x (model(x, training=False));
                y_onnxruntime: onnxruntime's output for the .onnx file;
                x_keras_nhwc (NCHW model only): x as fed to Keras.
  manifest.json one entry per model: shapes, the binary layers of the Keras model
                (1-bit input quantizer AND 1-bit kernel quantizer), the ONNX op chain
                of every quantizer feeding a binary layer, the ONNX ops around every
                binary layer, an analysis of every binary layer's ONNX weight
                (distinct magnitudes per output channel), the values of every
                quantizer output as computed by onnxruntime, and the numerical
                agreement with Keras.

The reference input x is a standard-normal draw; if onnxruntime does not reproduce
the Keras output for it to rounding error, x is redrawn, up to 5 times; rejected
draws are recorded in the manifest (agreement.x_draws_rejected_...).

Everything is deterministic: tf.keras.utils.set_random_seed(seed) before each
model is built, numpy RandomState(seed) for inputs and BatchNorm statistics, and
tf.keras.backend.clear_session() so that layer (hence ONNX node) names restart.

BatchNorm initialisation (as in tests/data/larq): every BatchNormalization layer
first gets its moving statistics set to the batch statistics of a random
calibration batch (one training-mode forward pass with momentum 0), then those are
perturbed (mean += 0.25*std*N(0,1), var *= U(0.5, 2)), gamma = U(0.5, 1.5) with a
random sign (about a quarter negative) and beta = N(0, 0.3). Conv/Dense biases
(where use_bias) are N(0, 0.3). This keeps quantizer inputs balanced around 0 and
makes exact zeros practically impossible.

Kernels quantized with alpha="auto" / "auto_po2" get each output channel of their float
kernel multiplied by exp(U(-1, 1)), so that their per-channel alphas differ from
channel to channel (otherwise they all sit near the initializer's mean |w|).

The .onnx files are tf2onnx's output except for names: shared (de-duplicated)
constants are renamed shared_const_<k> and tf2onnx's generated <base>__<counter>
names are renumbered in node order, because both vary from run to run otherwise.
With that, a re-run reproduces every file byte for byte.
"""

import argparse
import json
import logging
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tf2onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from qkeras import QActivation, QConv2D, QDense, QDepthwiseConv2D  # noqa: E402
from qkeras.quantizers import binary, quantized_bits  # noqa: E402

logging.getLogger("tf2onnx").setLevel(logging.ERROR)
tf.get_logger().setLevel(logging.ERROR)

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13

PINNED = {
    "tensorflow-cpu": "2.15.1",
    "keras": "2.15.0",
    "qkeras": "0.9.0",
    "tensorflow-model-optimization": "0.7.5",
    "tf2onnx": "1.16.1",
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
#
# Quantizers are given either as the string QKeras parses ("binary", "binary_tanh")
# or as a fresh quantizer object per layer (a QKeras quantizer object keeps state,
# e.g. .scale, so objects are never shared between layers).

L = tf.keras.layers


def _stem(x, filters=24):
    """Float first conv on the image, as real BNNs have."""
    x = L.Conv2D(filters, 3, padding="same", use_bias=False, name="stem_conv")(x)
    return L.BatchNormalization(name="stem_bn")(x)


def _bn(x):
    return L.BatchNormalization()(x)


def _qconv(x, filters, kq, kernel_size=3, strides=1, padding="same", use_bias=False):
    return QConv2D(filters, kernel_size, strides=strides, padding=padding, kernel_quantizer=kq(),
                   use_bias=use_bias)(x)


def _input():
    return tf.keras.Input((16, 16, 3), name="x")


def build_act_binary_kernel_alpha1():
    act, kq = (lambda: "binary"), (lambda: binary(alpha=1))
    inp = _input()
    x = _stem(inp)
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 32, kq))                                  # s1 same -> BN
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 32, kq, strides=2))                       # s2 same -> BN
    x = QActivation(act())(x)
    x = _qconv(x, 24, kq, padding="valid")                      # s1 valid, no BN, no bias
    x = L.GlobalAveragePooling2D()(x)
    x = QActivation(act())(x)
    x = QDense(10, kernel_quantizer=kq(), name="y")(x)
    return tf.keras.Model(inp, x, name="act_binary_kernel_alpha1")


def _auto_model(name, act, kq):
    inp = _input()
    x = _stem(inp)
    x = QActivation(act())(x)
    x = _qconv(x, 32, kq, use_bias=True)                        # s1 same, bias, no BN
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 32, kq, strides=2, padding="valid"))      # s2 valid -> BN
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 24, kq))                                  # s1 same -> BN
    x = L.GlobalAveragePooling2D()(x)
    x = QActivation(act())(x)
    x = QDense(10, kernel_quantizer=kq(), name="y")(x)
    return tf.keras.Model(inp, x, name=name)


def build_act_alpha1_kernel_auto():
    return _auto_model("act_alpha1_kernel_auto", lambda: binary(alpha=1), lambda: binary(alpha="auto"))


def build_act_binary_tanh_kernel_auto_po2():
    return _auto_model("act_binary_tanh_kernel_auto_po2", lambda: "binary_tanh", lambda: binary(alpha="auto_po2"))


def build_quantized_bits_1bit():
    q = lambda: quantized_bits(1, 0, 1, alpha=1)  # noqa: E731
    inp = _input()
    x = _stem(inp)
    x = QActivation(q())(x)
    x = _bn(_qconv(x, 32, q))                                   # s1 same -> BN
    x = QActivation(q())(x)
    x = _qconv(x, 32, q, strides=2, use_bias=True)              # s2 same, bias, no BN
    x = L.GlobalAveragePooling2D()(x)
    x = QActivation(q())(x)
    x = QDense(10, kernel_quantizer=q(), name="y")(x)
    return tf.keras.Model(inp, x, name="quantized_bits_1bit")


def build_depthwise():
    act, kq = (lambda: binary(alpha=1)), (lambda: binary(alpha=1))
    inp = _input()
    x = _stem(inp)
    x = QActivation(act())(x)
    x = _bn(QDepthwiseConv2D(3, padding="same", depthwise_quantizer=kq(), use_bias=False)(x))  # binary dw
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 32, kq, kernel_size=1))                   # binary pointwise
    x = QActivation(act())(x)
    x = _bn(QDepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x))  # float dw, binary input
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 32, kq, kernel_size=1))                   # binary pointwise
    x = L.GlobalAveragePooling2D()(x)
    x = QActivation(act())(x)
    x = QDense(10, kernel_quantizer=kq(), name="y")(x)
    return tf.keras.Model(inp, x, name="depthwise")


def build_nchw_input_flatten():
    act, kq = (lambda: "binary"), (lambda: binary(alpha=1))
    inp = _input()
    x = _stem(inp)
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 32, kq, strides=2))                       # 16x16 -> 8x8
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 16, kq, strides=2))                       # 8x8 -> 4x4
    x = QActivation(act())(x)
    x = L.Flatten()(x)                                          # 4*4*16 = 256, NHWC order
    x = QDense(10, kernel_quantizer=kq(), name="y")(x)
    return tf.keras.Model(inp, x, name="nchw_input_flatten")


def build_kernel_default_alpha_dense_head():
    act, kq = (lambda: "binary"), (lambda: binary())  # kernel binary() -> alpha='auto_po2' in the layer
    inp = _input()
    x = _stem(inp)
    x = QActivation(act())(x)
    x = _bn(_qconv(x, 32, kq, strides=2, padding="valid"))      # 16x16 -> 7x7
    x = L.GlobalAveragePooling2D()(x)
    x = QActivation(act())(x)
    x = _bn(QDense(32, kernel_quantizer=kq(), use_bias=False)(x))
    x = QActivation(act())(x)
    x = QDense(10, kernel_quantizer=kq(), name="y")(x)
    return tf.keras.Model(inp, x, name="kernel_default_alpha_dense_head")


def build_binarized_input_no_stem():
    """The first quantizer reads the graph input directly (binarized image, no float stem).
    Only there does the quantizer's Mul(1.0) (scale, and quantized_bits' qnoise_factor)
    survive grappler; everywhere else it is simplified away."""
    inp = _input()
    x = QActivation(quantized_bits(1, 0, 1, alpha=1))(inp)
    x = _bn(_qconv(x, 24, lambda: binary(alpha=1), strides=2))  # 3 -> 24, s2 same
    x = L.GlobalAveragePooling2D()(x)
    x = QActivation(binary(alpha=1))(x)
    x = QDense(10, kernel_quantizer=quantized_bits(1, 0, 1, alpha=1), name="y")(x)
    return tf.keras.Model(inp, x, name="binarized_input_no_stem")


MODELS = {
    "act_binary_kernel_alpha1": (
        build_act_binary_kernel_alpha1, {},
        "QActivation('binary') (alpha=None: tanh STE) + kernel binary(alpha=1); stem Conv(24)+BN -> "
        "QConv 24->32 s1 same -> BN -> QConv 32->32 s2 same -> BN -> QConv 32->24 s1 valid (no BN, no bias) "
        "-> GAP -> QDense 24->10 (bias)"),
    "act_alpha1_kernel_auto": (
        build_act_alpha1_kernel_auto, {},
        "QActivation(binary(alpha=1)) + kernel binary(alpha='auto'); stem -> QConv 24->32 s1 same (bias, no BN) "
        "-> QConv 32->32 s2 valid -> BN -> QConv 32->24 s1 same -> BN -> GAP -> QDense 24->10 (bias)"),
    "act_binary_tanh_kernel_auto_po2": (
        build_act_binary_tanh_kernel_auto_po2, {},
        "QActivation('binary_tanh') + kernel binary(alpha='auto_po2'); same topology as act_alpha1_kernel_auto"),
    "quantized_bits_1bit": (
        build_quantized_bits_1bit, {},
        "QActivation(quantized_bits(1,0,1,alpha=1)) + kernel quantized_bits(1,0,1,alpha=1); "
        "stem -> QConv 24->32 s1 same -> BN -> QConv 32->32 s2 same (bias, no BN) -> GAP -> QDense 32->10 (bias)"),
    "depthwise": (
        build_depthwise, {},
        "QActivation(binary(alpha=1)) + binary(alpha=1) kernels; stem -> QDepthwiseConv2D 3x3 s1 same "
        "(depthwise_quantizer=binary(alpha=1)) -> BN -> QConv 1x1 24->32 -> BN -> QDepthwiseConv2D 3x3 s2 same "
        "(float weights, no quantizer; binary input) -> BN -> QConv 1x1 32->32 -> BN -> GAP -> QDense 32->10 (bias)"),
    "nchw_input_flatten": (
        build_nchw_input_flatten, {"inputs_as_nchw": True},
        "exported with tf2onnx inputs_as_nchw=['x'] (ONNX input NCHW [1,3,16,16]); QActivation('binary') + "
        "kernel binary(alpha=1); stem -> QConv 24->32 s2 same -> BN -> QConv 32->16 s2 same -> BN -> "
        "QActivation -> Flatten (4*4*16) -> QDense 256->10 (bias)"),
    "kernel_default_alpha_dense_head": (
        build_kernel_default_alpha_dense_head, {},
        "QActivation('binary') + kernel binary() (alpha=None, which QConv2D/QDense turn into alpha='auto_po2'); "
        "stem -> QConv 24->32 s2 valid -> BN -> GAP -> QDense 32->32 (no bias) -> BN -> QDense 32->10 (bias)"),
    "binarized_input_no_stem": (
        build_binarized_input_no_stem, {},
        "no float stem: QActivation(quantized_bits(1,0,1,alpha=1)) on the graph input x -> QConv 3->24 s2 same "
        "(kernel binary(alpha=1)) -> BN -> GAP -> QActivation(binary(alpha=1)) -> QDense 24->10 "
        "(kernel quantized_bits(1,0,1,alpha=1), bias)"),
}


# --------------------------------------------------------------------------
# Keras-side helpers
# --------------------------------------------------------------------------

def randomize_batchnorm(model, rng, calib):
    bns = [l for l in model.layers if isinstance(l, L.BatchNormalization)]
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
    # non-zero biases (Keras initialises them to 0, which grappler then folds away)
    for l in model.layers:
        b = getattr(l, "bias", None)
        if getattr(l, "use_bias", False) and b is not None:
            b.assign((0.3 * rng.standard_normal(b.shape)).astype(np.float32))
    return len(bns), n_neg


def spread_auto_kernels(model, rng):
    """For kernels quantized with alpha='auto'/'auto_po2', multiply each output channel of the
    float kernel by exp(U(-1, 1)), so that the per-channel alphas differ (as after training)
    instead of all being about the initializer's mean |w|."""
    n = 0
    for l in model.layers:
        kq = kernel_quantizer_of(l)
        if kq is None or not isinstance(getattr(kq, "alpha", None), str):
            continue
        k = kernel_var_of(l)
        f = np.exp(rng.uniform(-1.0, 1.0, k.shape[-1])).astype(np.float32)
        k.assign(k.numpy() * f)
        n += 1
    return n


def quantizer_str(q):
    if q is None:
        return None
    if isinstance(q, (binary, quantized_bits)):
        return str(q)
    return getattr(q, "__name__", str(q))


def is_one_bit(q):
    """1-bit, +-1 valued quantizers: binary (use_01=False), quantized_bits(bits=1, keep_negative=True)
    and the binary_tanh function."""
    if q is None:
        return False
    if isinstance(q, binary):
        return not q.use_01
    if isinstance(q, quantized_bits):
        return q.bits == 1 and bool(q.keep_negative)
    return getattr(q, "__name__", None) == "binary_tanh"


def kernel_quantizer_of(l):
    if isinstance(l, QDepthwiseConv2D):
        return l.depthwise_quantizer_internal if l.depthwise_quantizer else None
    if isinstance(l, (QConv2D, QDense)):
        return l.kernel_quantizer_internal if l.kernel_quantizer else None
    return None


def kernel_var_of(l):
    return l.depthwise_kernel if isinstance(l, QDepthwiseConv2D) else l.kernel


def inbound(l):
    ins = l._inbound_nodes[0].inbound_layers
    return ins[0] if isinstance(ins, (list, tuple)) else ins


def input_qactivation(l):
    """The QActivation feeding layer l, looking through Flatten/Reshape (None if none)."""
    prev = inbound(l)
    while isinstance(prev, (L.Flatten, L.Reshape)):
        prev = inbound(prev)
    return prev if isinstance(prev, QActivation) else None


def passed_as(qact):
    a = qact.activation
    return repr(a) if isinstance(a, str) else f"object {str(a)}"


def _scale_summary(scale):
    if scale is None:
        return None
    s = np.asarray(scale, dtype=np.float64).ravel()
    d = dict(n=int(s.size), min=float(s.min()), max=float(s.max()))
    if np.all(s > 0):
        lg = np.log2(s)
        if np.all(lg == np.round(lg)):
            d["powers_of_two"] = sorted(set(int(v) for v in lg))
    return d


def quantized_layers(model):
    """Every QConv2D/QDepthwiseConv2D/QDense, with its input quantizer (the QActivation
    feeding it) and its kernel quantizer. binary = both 1-bit."""
    out = []
    for l in model.layers:
        if not isinstance(l, (QConv2D, QDepthwiseConv2D, QDense)):
            continue
        qa = input_qactivation(l)
        iq = qa.quantizer if qa is not None else None
        kq = kernel_quantizer_of(l)
        kernel = kernel_var_of(l)
        qk = kq(kernel).numpy() if kq is not None else kernel.numpy()  # eager: what Keras convolves with
        nxt = [n.outbound_layer for n in l._outbound_nodes]
        d = dict(name=l.name, cls=type(l).__name__,
                 binary=bool(is_one_bit(iq) and is_one_bit(kq)),
                 input_qactivation=qa.name if qa is not None else None,
                 input_quantizer=quantizer_str(iq),
                 input_quantizer_passed_as=passed_as(qa) if qa is not None else None,
                 kernel_quantizer=quantizer_str(kq),
                 kernel_alpha=getattr(kq, "alpha", None),
                 kernel_shape_keras=list(kernel.shape),
                 use_bias=bool(l.use_bias),
                 next_keras_layer=[type(n).__name__ for n in nxt])
        if isinstance(l, (QConv2D, QDepthwiseConv2D)):
            d.update(kernel_size=list(l.kernel_size), strides=list(l.strides), padding=l.padding)
        if isinstance(l, QConv2D):
            d["filters"] = l.filters
        elif isinstance(l, QDense):
            d["units"] = l.units
        if kq is not None and isinstance(getattr(kq, "alpha", None), str):
            d["kernel_scale"] = _scale_summary(kq.scale)
            d["kernel_scale_per_channel"] = [float(v) for v in np.asarray(kq.scale, dtype=np.float64).ravel()]
        uq = np.unique(np.abs(qk))
        d["keras_quantized_kernel"] = dict(n_distinct_abs=int(uq.size),
                                           abs_values=[float(v) for v in uq[:4]] if uq.size <= 4 else None)
        out.append((l, d, qk))
    return out


def qactivation_input_stats(model, x):
    layers = [l for l in model.layers if isinstance(l, QActivation)]
    sub = tf.keras.Model(model.inputs, [l.input for l in layers])
    vals = sub(x, training=False)
    vals = vals if isinstance(vals, (list, tuple)) else [vals]
    a = np.concatenate([np.abs(v.numpy()).ravel() for v in vals])
    return dict(count=int(a.size), min_abs=float(a.min()), n_below_1e_4=int((a < 1e-4).sum()),
                n_exact_zero=int((a == 0).sum()))


# --------------------------------------------------------------------------
# ONNX export and canonical names (same as tests/data/larq/regenerate.py)
# --------------------------------------------------------------------------

def canonicalize_shared_constants(mp):
    """Rename every initializer read by more than one node to shared_const_<k> (k in order
    of first use) and order the initializers by first use (tf2onnx's choice of surviving
    name among equal de-duplicated constants varies between runs)."""
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
    """Renumber tf2onnx's generated <base>__<counter> names in order of first appearance."""
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


def export_onnx(model, path, keras_in_shape, inputs_as_nchw=False):
    spec = (tf.TensorSpec(keras_in_shape, tf.float32, name="x"),)
    kw = dict(inputs_as_nchw=["x"]) if inputs_as_nchw else {}
    mp, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET, **kw)
    canonicalize_shared_constants(mp)
    canonicalize_generated_names(mp)
    onnx.checker.check_model(mp)
    onnx.save(mp, path)
    return mp


# --------------------------------------------------------------------------
# ONNX inspection
# --------------------------------------------------------------------------

LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Pad")


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
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _fmt_const(a):
    if a.size == 1:
        v = a.ravel()[0].item()
        return repr(v) if not isinstance(v, float) else repr(float(np.float32(v)))
    if a.size <= 8:
        return f"{a.dtype.name}{list(a.shape)}={a.ravel().tolist()}"
    return f"{a.dtype.name}{list(a.shape)}"


def _fmt_attrs(n):
    a = {k: _jsonable(v) for k, v in _attrs(n).items() if k != "dilations" or v != [1, 1]}
    return json.dumps(a, sort_keys=True) if a else ""


def _describe(n, inits):
    d = {"op": n.op_type}
    a = {k: _jsonable(v) for k, v in _attrs(n).items()}
    if a:
        d["attrs"] = a
    consts = {i: _fmt_const(inits[nm]) for i, nm in enumerate(n.input) if nm in inits and inits[nm].size <= 8}
    if consts:
        d["const_inputs"] = consts
    return d


class Graph:
    def __init__(self, mp):
        self.g = mp.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.order = {id(n): k for k, n in enumerate(self.g.node)}

    def data_input(self, n):
        ins = [i for i in n.input if i and i not in self.inits]
        return ins[0] if ins else None


_GENERATED_TRANSPOSE = re.compile(r"^Transpose__\d+$")


def quantizer_subgraph(G, out_tensor, prefix):
    """Nodes computing out_tensor whose names start with prefix (the QActivation layer's
    name scope), plus the Transposes that tf2onnx's optimiser generated between them, in
    graph order, and the tensors entering the subgraph from outside."""
    todo, nodes = [out_tensor], {}
    while todo:
        t = todo.pop()
        n = G.producer.get(t)
        if n is None or id(n) in nodes:
            continue
        # tf2onnx's transpose optimiser inserts Transposes named Transpose__<k> inside the quantizer
        if not (n.name.startswith(prefix) or (n.op_type == "Transpose" and _GENERATED_TRANSPOSE.match(n.name))):
            continue
        nodes[id(n)] = n
        todo.extend(i for i in n.input if i and i not in G.inits)
    nodes = sorted(nodes.values(), key=lambda n: G.order[id(n)])
    produced = {o for n in nodes for o in n.output}
    external = []
    for n in nodes:
        for i in n.input:
            if i and i not in G.inits and i not in produced and i not in external:
                external.append(i)
    return nodes, external


def render_expr(G, nodes, external, out_tensor):
    """Textual listing: 't3 = Sub(1.0, t2)' lines, X for the tensor entering the quantizer, Y its output."""
    names = {t: ("X" if len(external) == 1 else f"X{k}") for k, t in enumerate(external)}
    k = 0
    for n in nodes:
        for o in n.output:
            if o == out_tensor:
                names[o] = "Y"
            else:
                names[o] = f"t{k}"
                k += 1
    lines = []
    for n in nodes:
        args = []
        for i in n.input:
            if i in G.inits:
                args.append(_fmt_const(G.inits[i]))
            else:
                args.append(names.get(i, i))
        at = _fmt_attrs(n)
        lines.append(f"{', '.join(names[o] for o in n.output)} = {n.op_type}({', '.join(args)})" + (f" {at}" if at else ""))
    return lines


def weight_analysis(w, out_axis):
    """Per output channel: distinct |w| values, the main (most frequent) magnitude, the largest
    relative and ulp deviation from it."""
    a = np.abs(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1))
    n_distinct, mains, rel, ulps = [], [], [], []
    for row in a:
        u, c = np.unique(row, return_counts=True)
        main = u[np.argmax(c)]
        n_distinct.append(int(u.size))
        mains.append(float(main))
        dev = np.abs(row.astype(np.float64) - float(main))
        rel.append(float(dev.max() / float(main)) if main > 0 else float("inf"))
        ulps.append(float(dev.max() / float(np.spacing(np.float32(main)))) if main > 0 else float("inf"))
    n_distinct = np.array(n_distinct)
    hist = {int(k): int(v) for k, v in zip(*np.unique(n_distinct, return_counts=True))}
    all_pm1 = bool(np.all(a == 1))
    if all_pm1:
        kind = "sign"
    elif n_distinct.max() == 1:
        kind = "per_out_channel_scaled_sign"
    elif max(rel) < 1e-5:
        kind = "per_out_channel_scaled_sign_with_rounding_spread"
    else:
        kind = "float"
    d = dict(kind=kind,
             n_out_channels=int(a.shape[0]),
             distinct_abs_per_channel_hist=hist,
             max_distinct_abs_per_channel=int(n_distinct.max()),
             max_rel_dev_from_channel_main=float(max(rel)),
             max_ulp_dev_from_channel_main=float(max(ulps)),
             main_abs_min=float(min(mains)), main_abs_max=float(max(mains)),
             n_zero=int((a == 0).sum()), _mains=mains)
    if d["n_zero"] == 0 and not all_pm1:
        lg = np.log2(np.array(mains))
        d["main_abs_all_powers_of_two"] = bool(np.all(lg == np.round(lg)))
    return d


def keras_kernel_as_onnx(qk, cls):
    if cls == "QConv2D":
        return np.transpose(qk, (3, 2, 0, 1))
    if cls == "QDepthwiseConv2D":
        kh, kw, c, m = qk.shape
        return np.transpose(qk, (2, 3, 0, 1)).reshape(c * m, 1, kh, kw)
    return qk


def bn_after(model, lname):
    """Folding factors gamma/sqrt(var+eps) of a BatchNormalization directly after layer lname."""
    l = model.get_layer(lname)
    nxt = [n.outbound_layer for n in l._outbound_nodes]
    if len(nxt) == 1 and isinstance(nxt[0], L.BatchNormalization):
        bn = nxt[0]
        g = bn.gamma.numpy() if bn.scale else 1.0
        return (g / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)).astype(np.float32)
    return None


def onnx_sites(mp, model, qlayers):
    G = Graph(mp)
    mname = model.name
    sites, quantizer_nodes = [], {}
    for l, info, qk in qlayers:
        if info["input_qactivation"] is None:
            continue
        prefix = f"{mname}/{info['name']}/"
        nodes = [n for n in G.g.node if n.name.startswith(prefix) and n.op_type in ("Conv", "MatMul", "Gemm")]
        site = {"keras_layer": info["name"], "binary": info["binary"], "keras_cls": info["cls"]}
        if not nodes:
            site["onnx_node"] = None
            sites.append(site)
            continue
        n = nodes[0]
        site["onnx_node"] = n.name
        site["op"] = _describe(n, G.inits)
        # layout ops between the quantizer and the compute node
        post, cur = [], G.producer.get(n.input[0])
        qprefix = f"{mname}/{info['input_qactivation']}/"
        while cur is not None and cur.op_type in LAYOUT_OPS and not cur.name.startswith(qprefix):
            post.insert(0, _describe(cur, G.inits))
            cur = G.producer.get(G.data_input(cur))
        if cur is None or not cur.name.startswith(qprefix):
            site["quantizer"] = {"found": False, "reached": cur.op_type if cur is not None else "graph input"}
        else:
            out_t = cur.output[0]
            qnodes, ext = quantizer_subgraph(G, out_t, qprefix)
            expr = render_expr(G, qnodes, ext, out_t)
            # what feeds the quantizer: layout ops, then the source op
            pre, src = [], G.producer.get(ext[0]) if ext else None
            while src is not None and src.op_type in LAYOUT_OPS:
                pre.insert(0, _describe(src, G.inits))
                src = G.producer.get(G.data_input(src))
            site["quantizer"] = dict(found=True, qactivation=info["input_qactivation"],
                                     keras_quantizer=info["input_quantizer"], output_tensor=out_t,
                                     n_external_inputs=len(ext), expr=expr,
                                     op_types=[q.op_type for q in qnodes])
            site["input_from"] = src.op_type if src is not None else "graph input"
            site["layout_ops_before_quantizer"] = pre
            quantizer_nodes[info["input_qactivation"]] = out_t
        site["layout_ops_between_quantizer_and_op"] = post
        # weight
        wname = n.input[1]
        wd = {"name": wname}
        if wname in G.inits:
            w = G.inits[wname]
            trans_b = n.op_type == "Gemm" and _attrs(n).get("transB", 0)
            out_axis = 0 if (n.op_type == "Conv" or trans_b) else 1
            wd.update(initializer=True, shape=list(w.shape), dtype=w.dtype.name, out_axis=out_axis)
            wd.update(weight_analysis(w, out_axis))
            mains = np.array(wd.pop("_mains"))
            ref = keras_kernel_as_onnx(qk, info["cls"])
            if ref.shape == w.shape:
                wd["bitwise_equal_to_keras_quantized_kernel"] = bool(np.array_equal(ref, w))
                ks = info.get("kernel_scale_per_channel")
                if wd["bitwise_equal_to_keras_quantized_kernel"] and ks is not None:
                    ks = np.broadcast_to(np.array(ks), mains.shape)
                    # alpha as computed by the quantizer (float32), vs the main magnitude of the weight
                    wd["max_rel_diff_channel_main_vs_keras_alpha"] = float(np.max(np.abs(mains - ks) / np.abs(ks)))
                if not wd["bitwise_equal_to_keras_quantized_kernel"]:
                    f = bn_after(model, info["name"])
                    if f is not None:
                        shape = [1] * w.ndim
                        shape[out_axis] = -1
                        folded = ref * f.reshape(shape)
                        wd["bn_folded"] = True
                        wd["max_rel_diff_to_keras_kernel_times_bn_factor"] = float(
                            np.max(np.abs(w - folded) / np.maximum(np.abs(folded), 1e-30)))
                        wd["n_channels_with_negative_bn_factor"] = int((f < 0).sum())
        else:
            p = G.producer.get(wname)
            wd.update(initializer=False, produced_by=p.op_type if p else None)
        site["weight"] = wd
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
            b = G.inits.get(n.input[2])
            site["bias"] = {"name": n.input[2], "initializer": b is not None}
        after, cur = [], n
        for _ in range(4):
            cs = G.consumers.get(cur.output[0], [])
            if len(cs) != 1:
                if cs:
                    after.append({"fanout": [c.op_type for c in cs]})
                elif cur.output[0] in [o.name for o in G.g.output]:
                    after.append({"graph_output": cur.output[0]})
                break
            cur = cs[0]
            after.append(_describe(cur, G.inits))
            if cur.op_type in ("Conv", "MatMul", "Gemm", "GlobalAveragePool") or cur.name.startswith(f"{mname}/q_activation"):
                break
        site["followed_by"] = after
        sites.append(site)
    return sites, quantizer_nodes


def quantizer_outputs_check(mp, model, x_onnx, x_keras, quantizer_nodes):
    """Run onnxruntime with every quantizer output as an extra graph output; report the
    distinct values and whether they equal Keras' QActivation outputs (modulo layout)."""
    if not quantizer_nodes:
        return {}
    m2 = onnx.ModelProto.FromString(mp.SerializeToString())
    names = list(quantizer_nodes.items())
    for _, t in names:
        m2.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m2.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run([t for _, t in names], {sess.get_inputs()[0].name: x_onnx})
    layers = [model.get_layer(q) for q, _ in names]
    sub = tf.keras.Model(model.inputs, [l.output for l in layers])
    kv = sub(x_keras, training=False)
    kv = kv if isinstance(kv, (list, tuple)) else [kv]
    res = {}
    for (q, t), o, k in zip(names, outs, kv):
        k = k.numpy()
        layout = None
        if o.shape == k.shape and np.array_equal(o, k):
            layout = "same as Keras"
        elif o.ndim == 4 and np.array_equal(o, np.transpose(k, (0, 3, 1, 2))):
            layout = "NCHW (Keras NHWC)"
        u, c = np.unique(o, return_counts=True)
        res[q] = dict(onnx_tensor=t, shape=list(o.shape), distinct_values={repr(float(a)): int(b) for a, b in zip(u, c)},
                      equals_keras_output=layout is not None, layout=layout,
                      keras_distinct_values=sorted(float(a) for a in np.unique(k)))
    return res


# --------------------------------------------------------------------------

def process(name, builder, opts, desc, out_dir, seed, max_x_draws=5):
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.RandomState(seed)
    model = builder()
    keras_shape = [1] + [int(d) for d in model.input_shape[1:]]
    nchw = bool(opts.get("inputs_as_nchw"))
    calib = rng.standard_normal([4] + keras_shape[1:]).astype(np.float32)
    n_bn, n_neg = randomize_batchnorm(model, rng, calib)
    n_scaled = spread_auto_kernels(model, rng)
    qlayers = quantized_layers(model)

    onnx_path = os.path.join(out_dir, f"{name}.onnx")
    mp = export_onnx(model, onnx_path, keras_shape, inputs_as_nchw=nchw)

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    to_onnx = (lambda a: np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))) if nchw else (lambda a: a)
    rejected = []
    for _ in range(max_x_draws):
        xk = rng.standard_normal(keras_shape).astype(np.float32)
        y = model(xk, training=False).numpy()
        y_ort = sess.run(None, {sess.get_inputs()[0].name: to_onnx(xk)})[0]
        d = float(np.abs(y_ort - y).max())
        if d <= 1e-6 + 1e-4 * float(np.abs(y).max()):
            break
        rejected.append(d)
    x_onnx = to_onnx(xk)

    sites, qnodes = onnx_sites(mp, model, qlayers)
    qcheck = quantizer_outputs_check(mp, model, x_onnx, xk, qnodes)

    npz_path = os.path.join(out_dir, f"{name}.npz")
    arrays = dict(x=x_onnx, y=y, y_onnxruntime=y_ort)
    if nchw:
        arrays["x_keras_nhwc"] = xk
    np.savez_compressed(npz_path, **arrays)

    op_counts = {}
    for n in mp.graph.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    infos = [d for _, d, _ in qlayers]
    binl = [d for d in infos if d["binary"]]
    entry = dict(
        name=name,
        description=desc,
        keras_model_name=model.name,
        onnx=os.path.basename(onnx_path),
        npz=os.path.basename(npz_path),
        onnx_bytes=os.path.getsize(onnx_path),
        opset=[{"domain": o.domain or "ai.onnx", "version": o.version} for o in mp.opset_import],
        export_options=dict(opset=OPSET, inputs_as_nchw=["x"] if nchw else None),
        input_name=sess.get_inputs()[0].name,
        input_shape=list(x_onnx.shape),
        input_layout="NCHW" if nchw else "NHWC",
        keras_input_shape=keras_shape,
        output_name=sess.get_outputs()[0].name,
        output_shape=list(y.shape),
        seed=seed,
        batchnorm=dict(count=n_bn, negative_gamma_channels=n_neg),
        auto_alpha_kernels_spread=n_scaled,
        keras=dict(n_binary_layers=len(binl),
                   n_binary_by_class={c: sum(d["cls"] == c for d in binl)
                                      for c in ("QConv2D", "QDepthwiseConv2D", "QDense")},
                   quantized_layers=infos,
                   n_params=int(model.count_params())),
        quantizer_inputs=qactivation_input_stats(model, xk),
        onnx_graph=dict(op_counts=op_counts, op_sequence=[n.op_type for n in mp.graph.node],
                        sites=sites, quantizer_outputs=qcheck),
        agreement=dict(max_abs_y=float(np.abs(y).max()),
                       x_draws_rejected_onnxruntime_max_abs_diff=rejected,
                       onnxruntime_max_abs_diff=float(np.abs(y_ort - y).max())),
    )
    return entry


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE, help="output directory (default: this directory)")
    ap.add_argument("--only", nargs="*", help="subset of model names")
    args = ap.parse_args()

    vers = installed_versions()
    bad = {k: (v, PINNED[k]) for k, v in vers.items() if v != PINNED[k]}
    if bad:
        print("WARNING: versions differ from the pinned ones (installed, pinned):", bad, file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    man_path = os.path.join(args.out, "manifest.json")
    manifest = {}
    if os.path.exists(man_path):
        with open(man_path) as f:
            manifest = json.load(f)
    manifest["generator"] = "tests/data/qkeras/regenerate.py"
    manifest["versions"] = vers
    manifest["tf2onnx_opset"] = OPSET
    manifest["binary_layer_definition"] = (
        "a QConv2D / QDepthwiseConv2D / QDense whose kernel quantizer is 1-bit (binary with use_01=False, "
        "or quantized_bits with bits=1, keep_negative=True) and whose input comes (directly, or through "
        "Flatten) from a QActivation with a 1-bit quantizer (binary, quantized_bits(1,...), binary_tanh)")
    models = manifest.setdefault("models", {})

    names = args.only or list(MODELS)
    for i, (name, (builder, opts, desc)) in enumerate(MODELS.items()):
        if name not in names:
            continue
        print(f"== {name}", flush=True)
        e = process(name, builder, opts, desc, args.out, seed=3000 + i)
        models[name] = e
        print(f"   onnx {e['onnx_bytes']} B, binary layers {e['keras']['n_binary_layers']}, "
              f"max|y| {e['agreement']['max_abs_y']:.3g}, "
              f"ort diff {e['agreement']['onnxruntime_max_abs_diff']:.3g}", flush=True)
        if e["onnx_bytes"] > 150_000:
            print(f"WARNING: {name}.onnx is larger than 150 KB", file=sys.stderr)
    manifest["models"] = {k: models[k] for k in MODELS if k in models}

    # distinct quantizer op chains over all models
    pats = {}
    for e in manifest["models"].values():
        for s in e["onnx_graph"]["sites"]:
            q = s.get("quantizer") or {}
            if q.get("found"):
                key = (q["keras_quantizer"], "\n".join(q["expr"]))
                p = pats.setdefault(key, dict(keras_quantizer=q["keras_quantizer"], expr=q["expr"], used_in=[]))
                p["used_in"].append(f"{e['name']}/{s['keras_layer']}")
    manifest["quantizer_patterns"] = list(pats.values())

    with open(man_path, "w") as f:
        json.dump(manifest, f, indent=1, default=_jsonable)
        f.write("\n")
    print("wrote", man_path)


if __name__ == "__main__":
    main()
