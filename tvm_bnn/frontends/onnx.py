"""ONNX -> Relax through TVM's ONNX importer, after decomposing QONNX ops and folding constant sub-graphs.

torch.onnx.export writes computed attributes as small constant sub-graphs (the pads of F.pad come out of
Cast/Concat nodes), which TVM's importer rejects as dynamic. Nodes whose inputs are all constant are evaluated with
onnx's own reference evaluator and replaced by initializers before import.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from ..errors import ModelImportError
from .model import ImportedModel
from .qonnx import check_domains, decompose_qonnx

_LAYER_OPS = ("Conv", "Gemm", "MatMul")
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


def load_onnx(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelImportError(f"model: file {path!r} does not exist")
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise ModelImportError(f"model: {path!r} is not a valid ONNX model ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); pass an .onnx file "
                               "written by torch.onnx.export or onnx.save") from exc
    if not proto.graph.node:
        raise ModelImportError(f"model: {path!r} holds no ONNX graph nodes; is it an ONNX model?")
    return proto


def fold_constants(proto):
    """Evaluate every node whose inputs are all constants; returns a new ModelProto."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - set(consts)
    kept = []
    for node in graph.node:
        if node.op_type == "Constant":
            value = ReferenceEvaluator(helper.make_model(helper.make_graph(
                [node], "c", [], [helper.make_tensor_value_info(node.output[0], 0, None)]),
                opset_imports=proto.opset_import)).run(None, {})[0]
            consts[node.output[0]] = np.asarray(value)
            continue
        ins = [i for i in node.input if i]
        if node.op_type in _NONDETERMINISTIC or node.domain not in ("", "ai.onnx") or not ins or \
                any(i in graph_inputs or i not in consts for i in ins) or node.attribute and any(
                    a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            kept.append(node)
            continue
        sub = helper.make_graph([node], "fold",
                                [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(consts[i].dtype),
                                                               consts[i].shape) for i in ins],
                                [helper.make_tensor_value_info(o, 0, None) for o in node.output if o])
        try:
            outs = ReferenceEvaluator(helper.make_model(sub, opset_imports=proto.opset_import)).run(
                None, {i: consts[i] for i in ins})
        except Exception:  # noqa: BLE001 - leave anything the evaluator cannot do to TVM's importer
            kept.append(node)
            continue
        for name, value in zip([o for o in node.output if o], outs):
            consts[name] = np.asarray(value)
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    for name in [i.name for i in graph.input]:
        if name not in graph_inputs and name not in used:
            idx = [i.name for i in graph.input].index(name)
            del graph.input[idx]
    return proto


def fold_pad_into_conv(proto):
    """Pad(constant 0, H/W only) whose only reader is a Conv -> the Conv's own pads (exact: Conv pads with zeros).

    TVM's importer lowers Pad to an opaque TIR call, which would hide the binarized tensor from the conv.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    readers = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    drop = []
    for pad in proto.graph.node:
        if pad.op_type != "Pad" or pad.output[0] in outputs or len(readers.get(pad.output[0], [])) != 1:
            continue
        conv = readers[pad.output[0]][0]
        if conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
            continue
        mode = next((helper.get_attribute_value(a) for a in pad.attribute if a.name == "mode"), b"constant")
        if mode not in (b"constant", "constant") or len(pad.input) < 2 or pad.input[1] not in inits:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = inits.get(pad.input[2])
            if value is None or numpy_helper.to_array(value).reshape(-1)[0] != 0:
                continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # explicit axes: leave it to the importer
        pads = numpy_helper.to_array(inits[pad.input[1]]).astype(int).tolist()
        if len(pads) != 8 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
            continue
        auto_pad = next((helper.get_attribute_value(a) for a in conv.attribute if a.name == "auto_pad"), b"NOTSET")
        if auto_pad not in (b"NOTSET", "NOTSET"):
            continue
        old = next((list(helper.get_attribute_value(a)) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        drop.append(pad)
    for node in drop:
        proto.graph.node.remove(node)
    return proto


def _input_shapes(proto, example_inputs):
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if example_inputs is not None and not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    if example_inputs is not None and len(example_inputs) != len(inputs):
        raise ModelImportError(f"example_inputs: the ONNX model has {len(inputs)} inputs "
                               f"({', '.join(i.name for i in inputs)}), got {len(example_inputs)} example inputs")
    shapes, dtypes = {}, {}
    from onnx import helper

    for idx, inp in enumerate(inputs):
        t = inp.type.tensor_type
        dtypes[inp.name] = str(helper.tensor_dtype_to_np_dtype(t.elem_type))
        if example_inputs is not None:
            shapes[inp.name] = list(np.shape(example_inputs[idx]))
            continue
        dims = []
        for d in t.shape.dim:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                raise ModelImportError(
                    f"input {inp.name!r} has a dynamic dimension ({d.dim_param or '?'}); pass example_inputs=... "
                    "(or --input-shape on the command line) to fix the sizes to compile for")
            dims.append(int(d.dim_value))
        shapes[inp.name] = dims
    return [i.name for i in inputs], shapes, dtypes


_GATHER_PADS = {"edge": "edge", "reflect": "reflect", "wrap": "wrap"}  # ONNX Pad mode: numpy's name


def _pad_as_gathers(bb, x, before, after, mode):
    """An edge / reflect / wrap Pad as ``take``s with constant indices along each padded axis (the PyTorch route's
    form: every element is one of the input's, which the binarization analysis sees through), or None (a crop, a
    reflection wider than the axis, a dynamic shape: the importer's own lowering)."""
    from tvm import relax

    from ..passes.graph import static_shape

    shape = static_shape(x)
    if shape is None or len(before) != len(shape):
        return None
    out = x
    for axis, (b, a, n) in enumerate(zip(before, after, shape)):
        b, a = int(b), int(a)
        if b < 0 or a < 0 or (mode == "reflect" and max(b, a) > n - 1):
            return None
        if b or a:
            indices = np.pad(np.arange(n, dtype=np.int64), (b, a), mode=_GATHER_PADS[mode])
            out = bb.emit(relax.op.take(out, relax.const(indices), axis=axis, mode="clip"))
    return out


@contextlib.contextmanager
def _relax_ops_for_pad_and_clip():
    """TVM's importer lowers a constant-mode Pad and every Clip to opaque TIR functions (``emit_te(topi...)``),
    behind which no pass sees what is padded or clamped, or with what (a Larq QuickNet conv pads its ±1 input with
    1.0: LCE's one-padding; a Hardtanh before a sign exports as a Clip). While importing, a constant Pad becomes
    Relax's ``nn.pad`` and a Clip with constant bounds ``maximum``/``minimum`` (same results; other forms unchanged)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    class RelaxPad(frontend.Pad):
        @classmethod
        def _lower_pad(cls, bb, inputs, attr, params, allowed_modes):
            mode = attr.get("mode", b"constant").decode("utf-8")
            if mode in _GATHER_PADS:
                gathered = _pad_as_gathers(bb, inputs[0], *cls._parse_pads_and_axes(inputs, params)[:2], mode)
                return super()._lower_pad(bb, inputs, attr, params, allowed_modes) if gathered is None else gathered
            if mode != "constant":
                return super()._lower_pad(bb, inputs, attr, params, allowed_modes)
            before, after, value = cls._parse_pads_and_axes(inputs, params)
            widths = [int(v) for pair in zip(before, after) for v in pair]
            return bb.emit(relax.op.nn.pad(inputs[0], widths, "constant", float(value)))

    class RelaxClip(frontend.Clip):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            bounds = [frontend.get_constant(b, params) if b is not None else None for b in inputs[1:3]]
            if any(b is not None and not isinstance(b, tvm.ir.GenericConst) for b in bounds):
                return super()._impl_v13(bb, inputs, attr, params)
            out = inputs[0]
            for bound, op in zip(bounds, (relax.op.maximum, relax.op.minimum)):
                if bound is not None and not np.isnan(bound.value.numpy()).any():  # NaN: unbounded (ONNX)
                    out = bb.emit(op(out, bound))
            return out

    original = frontend._get_convert_map

    def convert_map():
        return {**original(), "Pad": RelaxPad, "Clip": RelaxClip}

    frontend._get_convert_map = convert_map
    try:
        yield
    finally:
        frontend._get_convert_map = original


def import_onnx(model, example_inputs) -> ImportedModel:
    from tvm.relax.frontend.onnx import from_onnx

    proto = check_domains(decompose_qonnx(load_onnx(model)))
    names, shapes, dtypes = _input_shapes(proto, example_inputs)
    proto = fold_pad_into_conv(fold_constants(proto))
    try:
        with _relax_ops_for_pad_and_clip():
            mod = from_onnx(proto, shape_dict=shapes, dtype_dict=dtypes)
    except Exception as exc:  # noqa: BLE001
        raise ModelImportError(f"model: TVM's ONNX importer cannot translate this model: "
                               f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}\n"
                               "Replace the unsupported operator or re-export with a lower opset") from exc
    layers = [n for n in proto.graph.node if n.op_type in _LAYER_OPS]
    return ImportedModel(mod, names, [n.name or n.output[0] for n in layers], "onnx",
                         layer_keys=_reach(proto, layers))


def _reach(proto, layers) -> list:
    """Per layer node: (graph inputs it depends on, graph outputs it reaches), as index sets. TVM's importer does
    not emit the layers in ONNX node order (a Gemm's matmul can come before an earlier MatMul), so the report's
    names are matched by this, which the Relax graph has too, and only then by order."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name for i in proto.graph.initializer}
    in_index = {i.name: k for k, i in enumerate(x for x in proto.graph.input if x.name not in inits)}
    out_index = {o.name: k for k, o in enumerate(proto.graph.output)}

    def walk(starts, step, stop):
        seen, todo, hits = set(), list(starts), set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in stop:
                hits.add(stop[t])
            todo.extend(step(t))
        return frozenset(hits)

    def up(t):
        node = producer.get(t)
        return [i for i in node.input if i] if node is not None else []

    def down(t):
        return [o for n in consumers.get(t, []) for o in n.output]

    return [(walk([i for i in n.input if i], up, in_index), walk(list(n.output), down, out_index)) for n in layers]
