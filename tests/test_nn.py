"""tvm_bnn.nn: training behaviour, and that what the modules export always binarizes exactly."""
import numpy as np
import torch

import tvm_bnn
from tvm_bnn import nn as bnn


def test_binary_sign_forward_and_straight_through_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = bnn.BinarySign()(x)
    np.testing.assert_array_equal(y.detach().numpy(), [-1, -1, 1, 1, 1])  # 0 -> +1
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0])  # Hardtanh STE


def test_stochastic_sign_is_stochastic_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    s = bnn.StochasticSign()
    x = torch.full((20000,), 0.5)
    frac = (s.train()(x) > 0).float().mean().item()
    assert abs(frac - 0.75) < 0.02  # P(+1) = (x + 1) / 2
    assert set(s.train()(torch.randn(100)).unique().tolist()) <= {-1.0, 1.0}
    np.testing.assert_array_equal(s.eval()(torch.tensor([-0.1, 0.0, 0.3])).numpy(), [-1, 1, 1])
    x = torch.randn(50, requires_grad=True)
    s.train()(x).sum().backward()
    assert torch.all(x.grad == 1)


def test_binary_layers_train():
    torch.manual_seed(0)
    model = torch.nn.Sequential(bnn.BinaryConv2d(1, 8, 3, padding=1, binarize_input=False), torch.nn.BatchNorm2d(8),
                                bnn.BinaryConv2d(8, 8, 3, padding=1, scale="xnor"), torch.nn.BatchNorm2d(8),
                                torch.nn.Flatten(), bnn.BinaryLinear(8 * 16, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, target = torch.randn(16, 1, 4, 4), torch.randint(0, 2, (16,))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_binary_modules_compile_exactly_with_stochastic_sign_in_eval():
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 33, 3, padding=1), torch.nn.BatchNorm2d(33), bnn.StochasticSign(),
        bnn.BinaryConv2d(33, 40, 3, padding=1, binarize_input=False, bias=False), torch.nn.BatchNorm2d(40),
        bnn.BinaryConv2d(40, 70, 3, stride=2, padding=1, scale="xnor", bias=False), torch.nn.BatchNorm2d(70),
        torch.nn.Flatten(), bnn.BinaryLinear(70 * 3 * 3, 5, bias=False)).eval()
    from .conftest import randomize_batchnorm

    randomize_batchnorm(model)
    x = torch.randn(2, 2, 6, 6)
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    assert [r.binarized for r in cm.report] == [False, True, True, True], str(cm.report)
    np.testing.assert_array_equal(cm(x), model(x).detach().numpy())
