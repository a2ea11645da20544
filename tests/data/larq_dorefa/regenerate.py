"""Regenerate Larq DoReFa-Net test models (Keras -> tf2onnx) in this directory.

NOT run by the test-suite and not importable from tvm_bnn: it needs TensorFlow, Larq and Larq Zoo, which tvm_bnn does
not depend on. Run it with the python of a separate virtual environment created outside the repository:

    python3.11 -m venv /work/larq-env
    /work/larq-env/bin/pip install tensorflow-cpu==2.16.2 tf-keras==2.16.0 larq==0.14.0 larq-zoo==2.4.0 \\
        tf2onnx==1.17.0 onnx==1.17.0 onnxruntime==1.26.0 numpy==1.26.4 protobuf==3.20.3
    /work/larq-env/bin/python tests/data/larq_dorefa/regenerate.py                   # the small models, here
    /work/larq-env/bin/python tests/data/larq_dorefa/regenerate.py --full DIR        # + larq_zoo's DoReFaNet in DIR

What it writes (``<name>.onnx``: tf2onnx at opset 13, NHWC input ``x`` [1, H, W, 3], output ``y``; ``<name>.npz``:
``x`` a standard-normal input, ``y`` Keras' output ``model(x, training=False)``, ``y_onnxruntime``; and
``manifest.json``: per model the Keras layers with their quantizers, the ONNX op counts, the agreement):

* ``dorefa_mini``: larq_zoo DoReFaNet's blocks at a small size: a float 8x8/4 stem conv, four QuantConv2D blocks
  (input ``DoReFa(k_bit=2)``, kernel larq_zoo's ``magnitude_aware_sign_unclipped``, 'same' zero padding,
  BatchNorm(scale=False), max-pools 3/2 'same' and 'valid'), Flatten, two QuantDense blocks, larq_zoo's
  ``clip_by_value_activation`` and a float Dense + softmax: every QuantConv2D / QuantDense is 1W2A.
* ``dorefa_w2a2``: the same with ``DoReFa(k_bit=2, mode="weights")`` kernels in two of the blocks (4 weight levels
  per layer: W2A2).
* ``--full DIR``: larq_zoo's ``DoReFaNet(weights=None)`` at 224x224 (62 M parameters, ~250 MB of ONNX), written to
  DIR (outside the repository) for ``bench/low_bit_models.py``.

The BatchNorms get moving statistics from a calibration batch (training-mode pass, momentum 0), then perturbed;
biases are drawn non-zero. Everything is seeded; the input is redrawn (up to 5 times) until onnxruntime reproduces
Keras to rounding (a DoReFa rounding tie within float rounding can fall on different sides in TF and onnxruntime).
"""
import argparse
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq needs Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import larq as lq  # noqa: E402
import tf2onnx  # noqa: E402
from larq_zoo.literature.dorefanet import clip_by_value_activation, magnitude_aware_sign_unclipped  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13


def _quant_conv(x, filters, kernel, kernel_quantizer, pool=None):
    x = lq.layers.QuantConv2D(filters, kernel, padding="same", input_quantizer=lq.quantizers.DoReFa(k_bit=2),
                              kernel_quantizer=kernel_quantizer, kernel_constraint=None, use_bias=False)(x)
    x = tf.keras.layers.BatchNormalization(scale=False, momentum=0.9, epsilon=1e-4)(x)
    if pool:
        x = tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding=pool)(x)
    return x


def _quant_dense(x, units, kernel_quantizer):
    x = lq.layers.QuantDense(units, input_quantizer=lq.quantizers.DoReFa(k_bit=2), kernel_quantizer=kernel_quantizer,
                             kernel_constraint=None, use_bias=False)(x)
    return tf.keras.layers.BatchNormalization(scale=False, momentum=0.9, epsilon=1e-4)(x)


def build_mini(two_bit_weights: bool):
    sign = magnitude_aware_sign_unclipped
    weights2 = lq.quantizers.DoReFa(k_bit=2, mode="weights") if two_bit_weights else sign
    image = tf.keras.Input((44, 44, 3))
    x = tf.keras.layers.Conv2D(24, 8, strides=4, padding="valid", use_bias=True)(image)  # 10x10
    x = _quant_conv(x, 40, 5, sign, pool="same")  # 5x5
    x = _quant_conv(x, 48, 3, weights2, pool="same")  # 3x3
    x = _quant_conv(x, 48, 3, sign)
    x = _quant_conv(x, 40, 3, weights2, pool="valid")  # 1x1
    x = tf.keras.layers.Flatten()(x)
    x = _quant_dense(x, 70, sign)
    x = _quant_dense(x, 70, weights2)
    x = tf.keras.layers.Activation(clip_by_value_activation)(x)
    x = tf.keras.layers.Dense(10, use_bias=True)(x)
    y = tf.keras.layers.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(image, y, name="dorefa_w2a2" if two_bit_weights else "dorefa_mini")


def build_full():
    from larq_zoo.literature.dorefanet import DoReFaNet

    return DoReFaNet(weights=None)


def settle_batchnorms(model, rng, calib):
    """Moving statistics from ``calib``, perturbed; beta and biases non-zero (Keras' zeros fold away)."""
    norms = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for bn in norms:
        bn.momentum = 0.0
    model(calib, training=True)
    for bn in norms:
        c = int(bn.moving_mean.shape[0])
        spread = np.sqrt(bn.moving_variance.numpy() + 1e-6)
        bn.moving_mean.assign((bn.moving_mean.numpy() + 0.2 * spread * rng.standard_normal(c)).astype(np.float32))
        bn.moving_variance.assign((bn.moving_variance.numpy() * rng.uniform(0.6, 1.6, c) + 1e-4).astype(np.float32))
        bn.beta.assign((0.25 * rng.standard_normal(c) + 0.4).astype(np.float32))  # DoReFa clips to [0, 1]
    for layer in model.layers:
        if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign((0.3 * rng.standard_normal(layer.bias.shape)).astype(np.float32))


def layer_table(model) -> list:
    rows = []
    for layer in model.layers:
        if isinstance(layer, (lq.layers.QuantConv2D, lq.layers.QuantDense)):
            def name(q):
                return None if q is None else getattr(q, "__name__", None) or repr(q.get_config())
            kernel = layer.kernel_quantizer(tf.constant(layer.kernel.numpy())).numpy()
            rows.append(dict(name=layer.name, cls=type(layer).__name__, input_quantizer=name(layer.input_quantizer),
                             kernel_quantizer=name(layer.kernel_quantizer), kernel_levels=int(len(np.unique(kernel)))))
    return rows


def export(model, out_dir, name, seed, with_npz=True):
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.RandomState(seed)
    shape = [1] + [int(d) for d in model.input_shape[1:]]
    settle_batchnorms(model, rng, rng.standard_normal([4] + shape[1:]).astype(np.float32))
    spec = (tf.TensorSpec(shape, tf.float32, name="x"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    path = os.path.join(out_dir, f"{name}.onnx")
    onnx.save(proto, path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rejected = []
    for _ in range(5):
        x = rng.standard_normal(shape).astype(np.float32)
        y = model(x, training=False).numpy()
        y_ort = session.run(None, {session.get_inputs()[0].name: x})[0]
        diff = float(np.abs(y - y_ort).max())
        if diff <= 1e-6 + 1e-4 * float(np.abs(y).max()):
            break
        rejected.append(diff)
    np.savez_compressed(os.path.join(out_dir, f"{name}.npz"), x=x, y=y, y_onnxruntime=y_ort)
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return dict(onnx=os.path.basename(path), onnx_bytes=os.path.getsize(path), input_shape=shape, seed=seed,
                params=int(model.count_params()), quant_layers=layer_table(model), onnx_ops=ops,
                onnxruntime_max_abs_diff=diff, x_draws_rejected=rejected)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--full", default=None, metavar="DIR", help="also export larq_zoo's DoReFaNet to DIR")
    args = parser.parse_args()
    versions = {m.__name__: m.__version__ for m in (tf, lq, tf2onnx, onnx, ort, np)}
    manifest = dict(versions=versions, models={})
    for seed, (name, two_bit) in enumerate([("dorefa_mini", False), ("dorefa_w2a2", True)], start=11):
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(seed)
        manifest["models"][name] = export(build_mini(two_bit), args.out, name, seed)
        print(name, manifest["models"][name]["onnxruntime_max_abs_diff"])
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    if args.full:
        os.makedirs(args.full, exist_ok=True)
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(7)
        entry = export(build_full(), args.full, "dorefanet", 7)
        with open(os.path.join(args.full, "dorefanet.json"), "w") as f:
            json.dump(entry, f, indent=1, sort_keys=True)
        print("dorefanet", entry["onnxruntime_max_abs_diff"], entry["onnx_bytes"])


if __name__ == "__main__":
    main()
