"""QONNX (Brevitas' ``export_qonnx``, FINN) -> standard ONNX, before TVM's ONNX importer sees the model.

QONNX models carry quantizers as custom ops in the domain ``qonnx.custom_op.general`` (also spelled
``onnx.brevitas``, ``finn.custom_op.general`` or ``finn``, which QONNX itself accepts as aliases): ``Quant``
(alias ``IntQuant``), ``BipolarQuant`` and ``Trunc``. :func:`decompose_qonnx` replaces each by standard ONNX ops that
compute the same values as QONNX's reference implementation (``qonnx.custom_op.general.intquant.int_quant``,
``bipolar_quant.binary_quant``, ``trunc.trunc_v1`` / ``trunc_v2``), in the same order of float operations:

* ``Quant(x, scale, zeropt, bitwidth; signed, narrow, rounding_mode)``: ``y = x / scale + zeropt``; for a signed
  1-bit quantizer ``y = where(y >= 0, 1, -1)``, otherwise ``y = round_mode(clip(y, min_int, max_int))``; then
  ``(y - zeropt) * scale``. The integer range comes from bitwidth / signed / narrow as in QONNX; the clip is QONNX's
  pair of ``where`` (``Greater``/``Less`` + ``Where``), which TVM imports as Relax ops (its Clip becomes opaque TIR).
* ``BipolarQuant(x, scale)``: ``where(x >= 0, 1, -1) * scale``.
* ``Trunc`` (opset 1 and 2 of the QONNX domain): ``round(x / scale + zeropt)`` rescaled by a power of two, clipped
  (v2), rounded with the node's mode and scaled back.

The bit width decides the integer range, so it must be a constant (an initializer or a Constant node); scales and
zero points may be any tensors. :func:`check_domains` then refuses any op of a domain TVM cannot import (a custom op),
naming it, instead of letting TVM's importer fail with an unrelated message.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ModelImportError

QONNX_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general", "finn")
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_DECOMPOSED = ("Quant", "IntQuant", "BipolarQuant", "Trunc")
_ROUNDING = ("ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN")


def _is_qonnx_domain(node) -> bool:
    if node.domain == "finn":  # QONNX's old style: "finn" without a backend attribute is the general domain
        return not any(a.name == "backend" for a in node.attribute)
    return node.domain in QONNX_DOMAINS


def _describe(node) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r} (domain {node.domain!r})"


def min_int(signed, narrow_range, bit_width):
    """QONNX's ``min_int``, verbatim (the same arithmetic on the same numpy types)."""
    if signed and narrow_range:
        value = -(2 ** (bit_width - 1)) + 1
    elif signed and not narrow_range:
        value = -(2 ** (bit_width - 1))
    else:
        value = 0 * bit_width
    return value


def max_int(signed, narrow_range, bit_width):
    """QONNX's ``max_int``, verbatim."""
    if not signed and not narrow_range:
        value = (2**bit_width) - 1
    elif not signed and narrow_range:
        value = (2**bit_width) - 2
    else:
        value = (2 ** (bit_width - 1)) - 1
    return value


class _Emitter:
    """Builds the replacement nodes of one QONNX node; every tensor name it makes is unique in the model."""

    def __init__(self, node, dtype, opset, taken):
        self.node, self.dtype, self.opset, self.taken = node, dtype, opset, taken
        self.base = (node.name or node.output[0]).replace("/", "_").strip("_") or "qonnx"
        self.nodes, self.inits, self.k = [], [], 0

    def name(self, hint):
        while True:
            self.k += 1
            n = f"{self.base}__{hint}_{self.k}"
            if n not in self.taken:
                self.taken.add(n)
                return n

    def const(self, value, hint="c"):
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def op(self, op_type, inputs, out=None, **attrs):
        from onnx import helper

        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.name(op_type), **attrs))
        return out

    def bipolar(self, y):
        """where(y >= 0, 1, -1) in y's dtype."""
        zero = self.const(0.0, "zero")
        if self.opset >= 12:
            ge = self.op("GreaterOrEqual", [y, zero])
        else:
            ge = self.op("Not", [self.op("Less", [y, zero])])
        return self.op("Where", [ge, self.const(1.0, "one"), self.const(-1.0, "minus_one")])

    def round(self, y, mode):
        """QONNX's resolve_rounding_mode(mode)(y), op by op."""
        mode = mode.upper()
        if mode in ("ROUND", "HALF_EVEN"):
            return self.op("Round", [y])  # ONNX Round: half to even, as np.round
        if mode == "CEIL":
            return self.op("Ceil", [y])
        if mode == "FLOOR":
            return self.op("Floor", [y])
        sign, mag = self.op("Sign", [y]), self.op("Abs", [y])
        if mode == "UP":  # np.sign(x) * np.ceil(np.abs(x))
            return self.op("Mul", [sign, self.op("Ceil", [mag])])
        if mode == "DOWN":  # np.fix: toward zero
            return self.op("Mul", [sign, self.op("Floor", [mag])])
        if mode == "HALF_UP":  # np.sign(x) * np.floor(np.abs(x) + 0.5)
            return self.op("Mul", [sign, self.op("Floor", [self.op("Add", [mag, self.const(0.5, "half")])])])
        if mode == "HALF_DOWN":  # np.sign(x) * np.ceil(np.abs(x) - 0.5)
            return self.op("Mul", [sign, self.op("Ceil", [self.op("Sub", [mag, self.const(0.5, "half")])])])
        raise ModelImportError(f"model: {_describe(self.node)}: rounding_mode {mode!r} is not one QONNX knows "
                               f"({', '.join(_ROUNDING)})")

    def clip(self, y, lo, hi):
        """QONNX's clamp, op for op: y = where(y > hi, hi, y); y = where(y < lo, lo, y). (ONNX Clip would do for every
        number, but TVM's importer turns Clip into opaque TIR calls, which hide the value range from the passes.)"""
        hi, lo = self.const(hi, "max_int"), self.const(lo, "min_int")
        y = self.op("Where", [self.op("Greater", [y, hi]), hi, y])
        return self.op("Where", [self.op("Less", [y, lo]), lo, y])


def decompose_qonnx(proto):
    """A copy of ``proto`` with every QONNX ``Quant`` / ``IntQuant`` / ``BipolarQuant`` / ``Trunc`` replaced by
    standard ONNX ops computing the same values; the QONNX opset import is dropped when nothing uses it any more.
    A model without QONNX ops comes back unchanged (the same object)."""
    import onnx

    if not any(_is_qonnx_domain(n) for n in _all_nodes(proto)):
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    qonnx_versions = {o.domain: o.version for o in proto.opset_import if o.domain in QONNX_DOMAINS}
    taken = _all_names(proto)
    consts = _constants(proto.graph)
    dtypes = _elem_types(proto.graph)
    qonnx_inputs = {i for n in _all_nodes(proto) if _is_qonnx_domain(n) for i in n.input}
    _rewrite_graph(proto.graph, opset, qonnx_versions, taken, consts, dtypes)
    for func in proto.functions:
        nodes = list(func.node)
        if any(_is_qonnx_domain(n) for n in nodes):
            new_inits = []
            func_consts = {**_constant_nodes(nodes)}
            replaced = _rewrite_nodes(nodes, opset, qonnx_versions, taken, func_consts, {}, new_inits)
            # functions have no initializers: constants become Constant nodes at the front
            from onnx import helper

            consts_nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in new_inits]
            del func.node[:]
            func.node.extend(consts_nodes + replaced)
            if not any(_is_qonnx_domain(n) for n in func.node):
                _drop_opsets(func.opset_import)
    if not any(_is_qonnx_domain(n) for n in _all_nodes(proto)):
        _drop_opsets(proto.opset_import)
    _drop_unused_initializers(proto.graph, qonnx_inputs)
    return proto


def check_domains(proto):
    """Raise ModelImportError naming the first op whose domain is neither standard ONNX nor decomposed QONNX: such an
    op is a custom op that TVM's ONNX importer cannot translate. Returns ``proto`` (for chaining)."""
    for node in _all_nodes(proto):
        if node.domain in STANDARD_DOMAINS:
            continue
        if _is_qonnx_domain(node):
            raise ModelImportError(
                f"model: {_describe(node)} is a QONNX custom op that tvm_bnn cannot translate (it decomposes "
                f"{', '.join(_DECOMPOSED)}); TVM's ONNX importer has no such operator. Remove it from the model or "
                "export without it")
        raise ModelImportError(
            f"model: {_describe(node)} is a custom op of domain {node.domain!r}, which TVM's ONNX importer cannot "
            "import (it knows only the standard ONNX domain); re-export the model with standard ONNX operators "
            "in its place")
    return proto


# -- internals -------------------------------------------------------------------------------------------------------

def _drop_unused_initializers(graph, candidates):
    """Initializers only the replaced nodes read (e.g. Trunc's input bit width), with their graph-input entries."""
    used = {i for n in _graph_nodes(graph) for i in n.input} | {o.name for o in graph.output}
    drop = {i.name for i in graph.initializer if i.name in candidates and i.name not in used}
    if not drop:
        return
    for field in (graph.initializer, graph.input):
        kept = [i for i in field if i.name not in drop]
        del field[:]
        field.extend(kept)


def _drop_opsets(opset_import):
    kept = [o for o in opset_import if o.domain not in QONNX_DOMAINS]
    del opset_import[:]
    opset_import.extend(kept)


def _subgraphs(node):
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _graph_nodes(graph):
    for n in graph.node:
        yield n
        for g in _subgraphs(n):
            yield from _graph_nodes(g)


def _all_nodes(proto):
    yield from _graph_nodes(proto.graph)
    for f in proto.functions:
        for n in f.node:
            yield n
            for g in _subgraphs(n):
                yield from _graph_nodes(g)


def _all_names(proto) -> set:
    names = set()

    def graph_names(g):
        names.update(i.name for i in g.initializer)
        names.update(i.name for i in g.input)
        names.update(o.name for o in g.output)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
            names.add(n.name)
            for sg in _subgraphs(n):
                graph_names(sg)

    graph_names(proto.graph)
    for f in proto.functions:
        for n in f.node:
            names.update(n.input)
            names.update(n.output)
            names.add(n.name)
    return names


def _constant_nodes(nodes) -> dict:
    from onnx import helper, numpy_helper

    out = {}
    for n in nodes:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1:
            a = n.attribute[0]
            if a.name == "value":
                out[n.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                v = helper.get_attribute_value(a)
                out[n.output[0]] = np.asarray(v, dtype=np.float32 if "float" in a.name else np.int64)
    return out


def _constants(graph) -> dict:
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update(_constant_nodes(graph.node))
    return consts


def _elem_types(graph) -> dict:
    from onnx import helper

    out = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.elem_type:
            out[vi.name] = helper.tensor_dtype_to_np_dtype(t.elem_type)
    for i in graph.initializer:
        out[i.name] = helper.tensor_dtype_to_np_dtype(i.data_type)
    return out


def _rewrite_graph(graph, opset, qonnx_versions, taken, consts, dtypes):
    new_inits = []
    nodes = _rewrite_nodes(list(graph.node), opset, qonnx_versions, taken, consts, dtypes, new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    for n in graph.node:  # nested graphs (If / Loop / Scan bodies) see the outer constants too
        for sg in _subgraphs(n):
            if any(_is_qonnx_domain(m) for m in _graph_nodes(sg)):
                _rewrite_graph(sg, opset, qonnx_versions, taken, {**consts, **_constants(sg)},
                               {**dtypes, **_elem_types(sg)})


def _rewrite_nodes(nodes, opset, qonnx_versions, taken, consts, dtypes, new_inits):
    out = []
    for node in nodes:
        if not _is_qonnx_domain(node) or node.op_type not in _DECOMPOSED:
            out.append(node)
            continue
        x = node.input[0]
        dtype = dtypes.get(x)
        if dtype is None and len(node.input) > 1:
            dtype = dtypes.get(node.input[1], consts[node.input[1]].dtype if node.input[1] in consts else None)
        dtype = np.dtype(dtype if dtype is not None else np.float32)
        em = _Emitter(node, dtype, opset, taken)
        if node.op_type in ("Quant", "IntQuant"):
            _quant(em, node, consts)
        elif node.op_type == "BipolarQuant":
            _bipolar_quant(em, node)
        else:
            _trunc(em, node, consts, qonnx_versions.get(node.domain))
        out.extend(em.nodes)
        new_inits.extend(em.inits)
        dtypes[node.output[0]] = dtype
    return out


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _need_inputs(node, count):
    if len(node.input) != count or not all(node.input):
        raise ModelImportError(f"model: {_describe(node)} has {len([i for i in node.input if i])} inputs; QONNX's "
                               f"{node.op_type} takes {count}")


def _constant_input(node, consts, index, what):
    name = node.input[index]
    if name not in consts:
        raise ModelImportError(
            f"model: {_describe(node)}: its {what} (input {index}, {name!r}) is computed at run time; tvm_bnn needs "
            "it as a constant (an initializer or a Constant node) to know the integer range")
    value = consts[name]
    if value.size != 1:
        raise ModelImportError(f"model: {_describe(node)}: its {what} ({name!r}) has shape {list(value.shape)}; "
                               "QONNX takes one bit width per tensor")
    return value


def _quant(em, node, consts):
    """qonnx.custom_op.general.intquant.int_quant."""
    _need_inputs(node, 4)
    x, scale, zeropt, _ = node.input
    attrs = _attrs(node)
    for req in ("signed", "narrow"):
        if req not in attrs:
            raise ModelImportError(f"model: {_describe(node)} has no {req!r} attribute, which QONNX requires")
    signed, narrow = int(attrs["signed"]), int(attrs["narrow"])
    mode = str(attrs.get("rounding_mode", "ROUND"))
    bitwidth = _constant_input(node, consts, 3, "bit width")
    y = em.op("Add", [em.op("Div", [x, scale]), zeropt])
    if bitwidth == 1 and signed:  # QONNX: a signed 1-bit Quant is bipolar, +-1 by y >= 0
        y = em.bipolar(y)
    else:
        lo = np.asarray(min_int(signed, narrow, bitwidth)).astype(em.dtype)
        hi = np.asarray(max_int(signed, narrow, bitwidth)).astype(em.dtype)
        y = em.round(em.clip(y, lo.reshape(()), hi.reshape(())), mode)
    em.op("Mul", [em.op("Sub", [y, zeropt]), scale], out=node.output[0])


def _bipolar_quant(em, node):
    """qonnx.custom_op.general.bipolar_quant.binary_quant."""
    _need_inputs(node, 2)
    x, scale = node.input
    em.op("Mul", [em.bipolar(x), scale], out=node.output[0])


def _trunc(em, node, consts, version):
    """qonnx.custom_op.general.trunc.trunc_v1 / trunc_v2 (by the model's opset of the QONNX domain; v2 if none)."""
    version = 2 if version is None or version >= 2 else 1
    attrs = _attrs(node)
    if version == 1:
        _need_inputs(node, 5)
        x, scale, zeropt, in_bw, out_bw = node.input
        if "rounding_mode" not in attrs:
            raise ModelImportError(f"model: {_describe(node)} has no 'rounding_mode' attribute, which QONNX requires")
        y = em.op("Round", [em.op("Add", [em.op("Div", [x, scale]), zeropt])])
        if in_bw in consts and out_bw in consts:
            trunc_scale = em.const(np.asarray(2.0 ** (consts[in_bw] - consts[out_bw])), "trunc_scale")
        else:
            trunc_scale = em.op("Pow", [em.const(2.0, "two"), em.op("Sub", [in_bw, out_bw])])
        y = em.round(em.op("Div", [y, trunc_scale]), str(attrs["rounding_mode"]))
        em.op("Mul", [em.op("Sub", [y, zeropt]), scale], out=node.output[0])
        return
    _need_inputs(node, 6)
    x, scale, zeropt, _, out_scale, out_bw = node.input
    signed, narrow = int(attrs.get("signed", 1)), int(attrs.get("narrow", 0))
    mode = str(attrs.get("rounding_mode", "FLOOR"))
    out_bitwidth = _constant_input(node, consts, 5, "output bit width")
    y = em.op("Round", [em.op("Add", [em.op("Div", [x, scale]), zeropt])])
    if out_scale in consts and scale in consts:
        trunc_scale = em.const(np.asarray(2 ** np.round(np.log2(consts[out_scale] / consts[scale]))), "trunc_scale")
    else:  # log2 through ln: exact after the rounding for the power-of-two ratios Trunc is made for
        ratio = em.op("Div", [em.op("Log", [em.op("Div", [out_scale, scale])]), em.const(math.log(2.0), "ln2")])
        trunc_scale = em.op("Pow", [em.const(2.0, "two"), em.op("Round", [ratio])])
    y = em.op("Div", [y, trunc_scale])
    lo = np.asarray(min_int(signed, narrow, out_bitwidth)).astype(em.dtype)
    hi = np.asarray(max_int(signed, narrow, out_bitwidth)).astype(em.dtype)
    y = em.round(em.clip(y, lo.reshape(()), hi.reshape(())), mode)
    out_zeropt = em.op("Div", [zeropt, trunc_scale])
    em.op("Mul", [em.op("Sub", [y, out_zeropt]), out_scale], out=node.output[0])
