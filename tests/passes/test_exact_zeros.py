"""The model's own zeros (README "Tie rule"): sign(0) = 0 is what the model computes wherever its ops make exact
zeros; the tie rule (+1) is only for an input that is 0 by chance. Every case is compiled for x86 and compared with
PyTorch exactly, on inputs that reach the zeros."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_bnn

from ..conftest import randomize_batchnorm


class _Net(torch.nn.Module):
    """float stem -> BN -> act1 -> binary conv -> BN -> act2 -> binary conv (sign weights, odd channel counts)."""

    def __init__(self, act1, act2=None, fresh_bn=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.act1, self.act2 = act1, act2 or act1
        self.stem = torch.nn.Conv2d(3, 13, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(13)
        self.w1 = torch.nn.Parameter(torch.randn(10, 13, 3, 3))
        self.bn1 = torch.nn.BatchNorm2d(10)
        self.w2 = torch.nn.Parameter(torch.randn(7, 10, 3, 3))
        if not fresh_bn:
            randomize_batchnorm(self, zero_gamma_channel=False)
        self.eval()

    def forward(self, x):
        y = self.bn0(self.stem(x))
        y = self.bn1(F.conv2d(self.act1(y), torch.sign(self.w1), padding=1))
        return F.conv2d(self.act2(y), torch.sign(self.w2), padding=1)


def _compile(model, x):
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    np.testing.assert_array_equal(cm(x), model(x).detach().numpy())
    return cm


@pytest.mark.parametrize("act", [
    lambda y: torch.sign(F.relu(y)),  # {0, 1}: the ReLU makes the zeros
    lambda y: torch.sign(F.max_pool2d(F.relu(y), 3, 1, 1)),  # zeros fed by a pooled ReLU (the root's atoms)
    lambda y: torch.sign(F.avg_pool2d(F.relu(y - 1.0), 3, 1, 1)),  # an average of zeros is 0
    lambda y: torch.sign(torch.clamp(y, min=0.0, max=2.0)),  # a clamp at 0
    lambda y: torch.sign(torch.where(y > 0.5, y, torch.zeros_like(y))),  # a where with a 0 branch
    lambda y: torch.sign(torch.round(y)),  # 3 values: stays float (exact all the same)
])
def test_model_made_zeros_keep_sign_zero(act):
    model = _Net(act)
    x = torch.randn(2, 3, 7, 6)
    assert np.any(act(model.bn0(model.stem(x))).detach().numpy() == 0)  # the zeros are reached
    _compile(model, x)


def test_sign_of_relu_binarizes_as_zero_one():
    """The issue's minimal form: F.conv2d(sign(relu(x)), sign(w), padding=1), off by up to 15 before."""
    torch.manual_seed(0)
    w = torch.randn(9, 5, 3, 3)

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(torch.sign(F.relu(x)), torch.sign(w), padding=1)

    cm = _compile(Net(), torch.randn(2, 5, 8, 7))
    assert cm.report[0].binarized, str(cm.report)


def test_zero_padding_before_the_sign_is_zero():
    """sign(F.pad(x)): the padding is the model's 0, so the packed tensor is zero-padded, not +1-padded."""
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(torch.sign(F.pad(x, (1, 2, 0, 1))), torch.sign(w))

    cm = _compile(Net(), torch.randn(1, 4, 6, 5))
    assert cm.report[0].binarized, str(cm.report)


def test_integer_preactivation_zero_is_a_third_level():
    """sign of a binary conv's output through a fresh BatchNorm (mean 0, var 1): dot = 0 happens and sign gives 0,
    a third value: the second layer computes {-1, 0, 1} in two bit planes (W1A2), exactly."""
    model = _Net(lambda y: torch.where(y >= 0, 1.0, -1.0), torch.sign, fresh_bn=True)
    x = torch.randn(2, 3, 7, 6)
    cm = _compile(model, x)
    assert [(r.binarized, r.bits) for r in cm.report] == [(False, "W32A32"), (True, "W1A1"), (True, "W1A2")], \
        str(cm.report)


def test_integer_preactivation_with_trained_bn_binarizes():
    """The same with BatchNorm statistics that never map an integer to exactly 0: the tie rule is never needed."""
    model = _Net(lambda y: torch.where(y >= 0, 1.0, -1.0), torch.sign)
    cm = _compile(model, torch.randn(2, 3, 7, 6))
    assert [r.binarized for r in cm.report] == [False, True, True], str(cm.report)


def test_tie_rule_on_a_float_input_that_is_zero_by_chance():
    """torch.sign of a float tensor: the compiled model takes sign(0) as +1 (README "Tie rule"); elsewhere exact."""
    torch.manual_seed(2)
    w = torch.sign(torch.randn(5, 3, 3, 3))

    class Net(torch.nn.Module):
        def forward(self, x):
            return F.conv2d(torch.sign(x), w)

    x = torch.randn(1, 3, 6, 6)
    cm = tvm_bnn.compile(Net(), "x86", example_inputs=(x,), progress=False)
    assert cm.report[0].binarized
    np.testing.assert_array_equal(cm(x), Net()(x).numpy())
    x[0, 0, 2, 2] = 0.0
    ties = F.conv2d(torch.where(x >= 0, 1.0, -1.0), w).numpy()
    np.testing.assert_array_equal(cm(x), ties)
