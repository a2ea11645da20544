"""schedules/loop_nests.py: reading a lowered nest's addresses back exactly (what a helper-call replacement may
assume), against the addresses enumerated point by point with numpy."""
import itertools

import numpy as np
import pytest
from tvm import tirx

from tvm_bnn.schedules import loop_nests


def nest(*extents):
    return [tirx.For(tirx.Var(f"i{k}", "int64"), tirx.const(0, "int64"), tirx.const(n, "int64"),
                     tirx.ForKind.SERIAL, tirx.Evaluate(tirx.const(0, "int32"))) for k, n in enumerate(extents)]


def enumerate_points(fn, extents):
    return np.array([fn(*p) for p in itertools.product(*[range(n) for n in extents])])


@pytest.mark.parametrize("extents,fn,expected", [
    ((3, 4), lambda i, j: i * 34 + j * 2 + 7, (7, [34, 2])),
    ((5, 4), lambda i, j: (i * 4 + j) // 4 * 36 + (i * 4 + j) % 4, (0, [36, 1])),  # a blocked layout, in range
    ((3, 1), lambda i, j: i * 3 + j * 1000, (0, [3, 0])),  # a loop of one iteration: j is 0
])
def test_affine_reads_strides(extents, fn, expected):
    loops = nest(*extents)
    base, strides = loop_nests.affine(fn(*[lp.loop_var for lp in loops]), loops)
    assert (int(base), strides) == expected
    got = enumerate_points(lambda *p: int(base) + sum(s * v for s, v in zip(strides, p)), extents)
    np.testing.assert_array_equal(got, enumerate_points(fn, extents))


@pytest.mark.parametrize("extents,fn", [
    ((3, 4), lambda i, j: i * j),
    ((6,), lambda i: i // 4),  # affine on no range that includes 3 and 4
    ((3, 4), lambda i, j: (i * 3 + j) // 4),
    ((2, 3), lambda i, j: tirx.max(i, j)),
])
def test_affine_refuses_what_is_not(extents, fn):
    loops = nest(*extents)
    assert loop_nests.affine(fn(*[lp.loop_var for lp in loops]), loops) is None


def test_affine_point_checks_are_bounded(monkeypatch):
    """An expression the linear detector cannot read is checked point by point only on small nests."""
    loops = nest(4, 4)
    expr = tirx.shift_left(loops[0].loop_var, tirx.const(1, "int64")) * 8 + loops[1].loop_var  # (i << 1) * 8 + j
    assert loop_nests.affine(expr, loops)[1] == [16, 1]
    monkeypatch.setattr(loop_nests, "MAX_POINTS", 15)
    assert loop_nests.affine(expr, loops) is None
