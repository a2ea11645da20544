"""Random elementwise chains of one float32 tensor over the whole op table of the activation analysis, built in Relax
and evaluated independently in numpy float32 as a model computes them (``sign(0) = 0``): the brute-force side of
tests/passes/test_piecewise.py and tests/fuzz/test_chains.py.
"""
import numpy as np
from tvm import relax

C = 4  # elements of x (per-element constants vary along them)
CONSTS = [0.0, 0.5, -0.5, 1.0, -1.0, 2.0, 0.3, -1.25, 1e-3, 3.0, 1000.0, 1e30, -0.0]


def _const(rng, channel_shape=(1, C)):
    if rng.random() < 0.3:
        return rng.choice(CONSTS, size=channel_shape).astype(np.float32)
    return np.float32(rng.choice(CONSTS))


class ChainCase:
    """A random chain: built in Relax (``expr``) and evaluated here in numpy (``evaluate``)."""

    def __init__(self, seed: int, steps: int, shape=(1, C), channel_shape=(1, C), pre=None, consumer=None):
        """``shape``: of x; ``channel_shape``: of the per-element constants (broadcast against x); ``pre``: (relax
        builder, numpy function) of an op applied to x before the chain (a ReLU, a pooling); ``consumer``: (relax
        builder) of the layer the chain feeds, the function's output (a conv)."""
        self.rng = rng = np.random.default_rng(seed)
        self.channel_shape = channel_shape
        self.bb = bb = relax.BlockBuilder()
        self.x = relax.Var("x", relax.TensorType(tuple(shape), "float32"))
        self.consts = []
        self.vars = [self.x]
        self.underflows = []  # sigmoid nodes: 0 only by underflow (outside the analysed domain, like overflow)
        self.ops = []  # (index of result, fn(values) -> array); values[0] = x
        self.signs = []  # indices of sign nodes, and of their inputs
        with bb.function("main", [self.x]):
            with bb.dataflow():
                floats, bools = [(0, self.x)], []
                self.has_pre = pre is not None
                if pre is not None:
                    floats = [self._emit(pre[0](self.x), pre[1])]
                for _ in range(steps):
                    self._step(floats, bools)
                if not self._last_is_bool and self.rng.random() < 0.7:  # most chains end in a binarizer
                    self._binarizer(floats)
                top = self._last
                if self._last_is_bool:
                    top = self._emit(relax.op.astype(top[1], "float32"), lambda v, i=top[0]: v[i].astype(np.float32))
                self.top_index, self.top = top
                out = bb.emit_output(consumer(top[1]) if consumer is not None else top[1])
            bb.emit_func_output(out)
        self.mod = bb.get()

    def index_of(self, var) -> int:
        """The node index of a variable of the chain (0: x)."""
        return next(k for k, v in enumerate(self.vars) if v.same_as(var))

    def _emit(self, call, fn, is_bool=False):
        var = self.bb.emit(call)
        index = len(self.ops) + 1
        self.ops.append(fn)
        self.vars.append(var)
        self._last, self._last_is_bool = (index, var), is_bool
        return index, var

    def _c(self, c):
        self.consts.append(np.asarray(c, np.float32))
        return relax.const(np.asarray(c, np.float32))

    def _binarizer(self, floats):
        i, a = floats[-1]
        kind = self.rng.integers(3)
        if kind == 0:
            out = self._emit(relax.op.sign(a), lambda v, i=i: np.sign(v[i]).astype(np.float32))
            self.signs.append((out[0], i))
            return
        c = _const(self.rng, self.channel_shape)
        name = str(self.rng.choice(["greater", "greater_equal", "less", "less_equal"]))
        k, cond = self._emit(getattr(relax.op, name)(a, self._c(c)),
                             lambda v, i=i, c=c, fn=getattr(np, name): fn(v[i], c), True)
        if kind == 2:
            lo, hi = (np.float32(v) for v in self.rng.choice([-1.0, 0.0, 1.0, 0.5, 3.0], 2, replace=False))
            self._emit(relax.op.where(cond, self._c(hi), self._c(lo)),
                       lambda v, k=k, lo=lo, hi=hi: np.where(v[k], hi, lo).astype(np.float32))

    def _step(self, floats, bools):
        rng = self.rng
        r = rng.random()
        i, a = floats[int(rng.integers(len(floats)))] if rng.random() < 0.4 else floats[-1]
        if r < 0.30:
            name = rng.choice(["sign", "abs", "negative", "relu", "floor", "ceil", "round", "trunc", "clip", "square",
                               "leaky", "tanh", "sigmoid", "relu6"])
            if name == "clip":
                lo, hi = sorted(rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0], 2, replace=False))
                out = self._emit(relax.op.clip(a, lo, hi),
                                 lambda v, i=i, lo=lo, hi=hi: np.minimum(np.maximum(v[i], np.float32(lo)),
                                                                         np.float32(hi)))
            elif name == "leaky":
                alpha = float(rng.choice([0.1, -0.5]))
                out = self._emit(relax.op.nn.leakyrelu(a, alpha),
                                 lambda v, i=i, al=alpha: np.where(v[i] > 0, v[i], v[i] * np.float32(al)))
            elif name == "relu":
                out = self._emit(relax.op.nn.relu(a), lambda v, i=i: np.maximum(v[i], np.float32(0)))
            elif name == "relu6":
                out = self._emit(relax.op.nn.relu6(a),
                                 lambda v, i=i: np.minimum(np.maximum(v[i], np.float32(0)), np.float32(6)))
            elif name in ("tanh", "sigmoid"):
                f = np.tanh if name == "tanh" else (lambda t: 1 / (1 + np.exp(-t)))
                out = self._emit(getattr(relax.op, name)(a),
                                 lambda v, i=i, f=f: f(v[i].astype(np.float64)).astype(np.float32))
                if name == "sigmoid":
                    self.underflows.append(out[0])
            else:
                fn = {"sign": np.sign, "abs": np.abs, "negative": np.negative, "floor": np.floor, "ceil": np.ceil,
                      "round": np.round, "trunc": np.trunc, "square": lambda t: t * t}[name]
                out = self._emit(getattr(relax.op, name)(a), lambda v, i=i, fn=fn: fn(v[i]).astype(np.float32))
                if name == "sign":
                    self.signs.append((out[0], i))
            floats.append(out)
        elif r < 0.55:
            name = str(rng.choice(["add", "subtract", "multiply", "divide", "maximum", "minimum"]))
            c = _const(rng, self.channel_shape)
            if name == "divide" and np.any(c == 0):
                c = np.float32(2.0)
            fn = getattr(np, name)
            if rng.random() < 0.5 or name == "divide" and rng.random() < 0.7:
                out = self._emit(getattr(relax.op, name)(a, self._c(c)),
                                 lambda v, i=i, c=c, fn=fn: fn(v[i], c).astype(np.float32))
            else:
                out = self._emit(getattr(relax.op, name)(self._c(c), a),
                                 lambda v, i=i, c=c, fn=fn: fn(c, v[i]).astype(np.float32))
            floats.append(out)
        elif r < 0.65:
            name = str(rng.choice(["add", "subtract", "multiply", "maximum", "minimum"]))
            j, b = floats[int(rng.integers(len(floats)))]
            out = self._emit(getattr(relax.op, name)(a, b),
                             lambda v, i=i, j=j, fn=getattr(np, name): fn(v[i], v[j]).astype(np.float32))
            floats.append(out)
        elif r < 0.82:
            name = str(rng.choice(["greater", "greater_equal", "less", "less_equal", "equal", "not_equal"]))
            fn = getattr(np, name)
            if rng.random() < 0.75:
                c = _const(rng, self.channel_shape)
                out = self._emit(getattr(relax.op, name)(a, self._c(c)),
                                 lambda v, i=i, c=c, fn=fn: fn(v[i], c), True)
            else:
                j, b = floats[int(rng.integers(len(floats)))]
                out = self._emit(getattr(relax.op, name)(a, b), lambda v, i=i, j=j, fn=fn: fn(v[i], v[j]), True)
            bools.append(out)
        elif r < 0.87 and bools:
            k, p = bools[int(rng.integers(len(bools)))]
            if rng.random() < 0.3 or len(bools) < 2:
                out = self._emit(relax.op.logical_not(p), lambda v, k=k: ~v[k], True)
            else:
                name = str(rng.choice(["logical_and", "logical_or", "logical_xor"]))
                m, q = bools[int(rng.integers(len(bools)))]
                out = self._emit(getattr(relax.op, name)(p, q),
                                 lambda v, k=k, m=m, fn=getattr(np, name): fn(v[k], v[m]), True)
            bools.append(out)
        elif bools:
            k, cond = bools[-1] if rng.random() < 0.6 else bools[int(rng.integers(len(bools)))]
            branches = []
            for _ in range(2):
                if rng.random() < 0.5:
                    c = _const(rng, self.channel_shape)
                    branches.append((self._c(c), lambda v, c=c: c))
                else:
                    j, b = floats[int(rng.integers(len(floats)))]
                    branches.append((b, lambda v, j=j: v[j]))
            (ea, fa), (eb, fb) = branches
            out = self._emit(relax.op.where(cond, ea, eb),
                             lambda v, k=k, fa=fa, fb=fb: np.where(v[k], fa(v), fb(v)).astype(np.float32))
            floats.append(out)
        else:
            out = self._emit(relax.op.astype(a, "bool"), lambda v, i=i: v[i] != 0, True)
            bools.append(out)

    def evaluate(self, x: np.ndarray, tie: bool = False):
        """All node values at ``x`` ([S, 1, C] float32); ``tie``: every sign(0) taken as +1."""
        values = [x]
        with np.errstate(all="ignore"):
            for k, fn in enumerate(self.ops):
                out = np.asarray(fn(values))
                if tie and any(s == k + 1 for s, _ in self.signs):
                    src = next(i for s, i in self.signs if s == k + 1)
                    out = np.where(values[src] == 0, np.float32(1), out).astype(np.float32)
                if self.has_pre and k == 0:  # the op before the chain (a padding changes the shape)
                    values.append(out)
                    continue
                values.append(np.broadcast_to(out, values[1].shape if self.has_pre else x.shape))
        return values


def samples(case: ChainCase, src, rng) -> np.ndarray:
    """float32 values per element: random at many scales, the chain's constants and the analysis' thresholds with
    their neighbours, +-0, subnormals, extremes."""
    pts = [rng.standard_normal(600) * s for s in (1e-3, 0.3, 1.0, 3.0, 100.0, 1e6)]
    pts += [np.arange(-8, 8.5, 0.5)]
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1e-30, 3.4e38, -3.4e38, 1e38, -1e38], np.float32)
    pts.append(special)
    for c in case.consts:
        pts.append(np.unique(np.asarray(c, np.float64)))
    base = np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in pts])
    per_element = [np.broadcast_to(base[:, None], (base.size, C))]
    if src is not None:
        tests = zip(src.scales, src.thresholds) if hasattr(src, "scales") else [(src.scale, src.threshold)]
        for scale, threshold in tests:
            t = np.broadcast_to(threshold * np.where(scale == 0, 1, scale), (1, C)).astype(np.float32)
            per_element.append(np.broadcast_to(t, (1, C)))
    grid = np.concatenate(per_element)
    around = [grid]
    for direction in (np.inf, -np.inf):
        step = grid
        for _ in range(2):
            step = np.nextafter(step, np.float32(direction))
            around.append(step)
    return np.concatenate(around).astype(np.float32)[:, None, :]  # [S, 1, C]


def isolated_zero(case: ChainCase, x, sign_input: int) -> np.ndarray:
    """Per sample: is the sign's input non-zero a rounding away on both sides (0 by chance)?"""
    values = case.evaluate(x)
    mags = [np.abs(np.nan_to_num(np.asarray(v, np.float64), posinf=0, neginf=0)) for v in values
            if np.asarray(v).dtype.kind == "f"]
    if all(m.shape == x.shape for m in mags):  # elementwise: a rounding of each element's own magnitudes
        mag = np.max(mags, axis=0)
    else:  # an op before the chain moves elements (a padding, a pooling): the largest magnitude of all
        mag = max(float(np.max(m)) for m in mags)
    delta = np.maximum(mag * 2.0 ** -16, 2.0 ** -99).astype(np.float32)
    ok = np.ones(values[sign_input].shape, bool)
    for side in (-1, 1):
        with np.errstate(all="ignore"):
            xs = (x.astype(np.float64) + side * delta).astype(np.float32)
        ok &= case.evaluate(xs)[sign_input] != 0
    return ok


def finite(values, case=None) -> np.ndarray:
    """Per element: in the analysed domain (every intermediate finite, no sigmoid underflowed to 0)?"""
    ok = np.ones(values[-1].shape, bool)
    for k, v in enumerate(values):
        v = np.asarray(v)
        if v.dtype.kind == "f" and v.shape == ok.shape:
            ok &= np.isfinite(v)
            if case is not None and k in case.underflows:
                ok &= v != 0
    return ok


