"""The README's main job runs end to end (few epochs) and the compiled model agrees with PyTorch."""
import importlib.util
import os


def test_digits_demo_runs_and_accuracies_are_equal(capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "digits_demo.py")
    spec = importlib.util.spec_from_file_location("digits_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "(equal; predictions identical: True" in out
    assert "3 of 4 conv2d/dense layers binarized" in out
    assert "latency, batch 1" in out
