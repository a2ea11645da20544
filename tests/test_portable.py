"""x86 CPU features, the SIGILL guard and the portable x86 build.

* Code for CPU features the host lacks is refused (CPUFeatureError naming them) by ``cm(x)``, ``time``, ``profile``,
  ``load`` and tuning, before anything runs; building it is fine. A host of a lower level is simulated with
  ``TVM_BNN_X86_LEVEL`` (which can only lower the level), so the refusals are tested on any x86-64 host.
* ``x86-portable``: one library with a build per ISA level; each level's asm is checked on any host, and each level
  this host can run is forced (``level=`` and the environment variable) and compared with PyTorch.
* Loading prints nothing (TVM's per-constant ``Scope Loaded`` warnings are filtered); ``tvm-bnn inspect`` shows the
  levels and the one this host gets.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import tvm_bnn
from tvm_bnn import nn as bnn
from tvm_bnn.errors import CPUFeatureError
from tvm_bnn.targets import resolve_target, x86_host

from .conftest import assert_float_close, need_isa, randomize_batchnorm

pytestmark = pytest.mark.skipif(not x86_host.is_x86_host(), reason="x86-64 host only")


class Net(torch.nn.Module):
    """float stem -> binary conv (bits out, fused BN threshold) -> max-pool -> binary dense -> float output."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16))
        self.conv = bnn.BinaryConv2d(16, 70, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(70)
        self.fc = bnn.BinaryLinear(70 * 4 * 4, 10, bias=False)
        self.bn_fc = torch.nn.BatchNorm1d(10)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(self.bn(self.conv(self.stem(x))), 2)
        return self.bn_fc(self.fc(y.flatten(1)))


def _asm(executable):
    return executable.mod.inspect_source("asm") + "".join(
        m.inspect_source("asm") for m in executable.mod.imports if m.kind == "llvm")


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_batchnorm(Net())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    cm = tvm_bnn.compile(model, "x86-portable", example_inputs=(x,), progress=False)
    path = cm.export(str(tmp_path_factory.mktemp("portable") / "model.so"))
    return model, x, ref, cm, path


@pytest.fixture
def no_forced_level(monkeypatch):
    monkeypatch.delenv(x86_host.LEVEL_ENV, raising=False)


# ------------------------------------------------------------------------------------------ features and levels


def test_levels_are_the_x86_64_psabi_levels_plus_vpopcntdq():
    assert x86_host.LEVEL_NAMES == ("avx512", "avx2", "popcnt", "sse2")
    features = [x86_host.level(n).features for n in x86_host.LEVEL_NAMES]
    assert all(lower < higher for higher, lower in zip(features, features[1:]))  # each level adds to the one below
    assert {"avx512f", "avx512bw", "avx512vl", "avx512vpopcntdq"} <= features[0]
    assert {"avx2", "fma", "bmi2"} <= features[1] and "avx512f" not in features[1]
    assert {"popcnt", "sse4.2"} <= features[2] and "avx" not in features[2]
    assert features[3] == {"cmov", "sse", "sse2"}


def test_host_features_are_the_cpuinfo_flags(no_forced_level):
    flags = set(x86_host._cpuinfo().get("flags", "").split())
    if not flags:
        pytest.skip("no /proc/cpuinfo flags: LLVM's host CPU features are used")
    have = x86_host.host_features()
    for feature, flag in x86_host.FEATURE_FLAGS.items():
        assert (feature in have) == (flag in flags), feature
    assert x86_host.host_level() in x86_host.LEVEL_NAMES
    assert x86_host.level(x86_host.host_level()).features <= have
    assert not x86_host.missing_features(resolve_target("x86").required_features)  # "x86" always runs here


@pytest.mark.parametrize("name", x86_host.LEVEL_NAMES)
def test_a_forced_level_lowers_the_host(monkeypatch, name):
    monkeypatch.delenv(x86_host.LEVEL_ENV, raising=False)
    real, real_level = x86_host.host_features(), x86_host.host_level()
    monkeypatch.setenv(x86_host.LEVEL_ENV, name)
    if x86_host.LEVEL_NAMES.index(name) < x86_host.LEVEL_NAMES.index(real_level):
        with pytest.raises(CPUFeatureError, match="can only lower"):
            x86_host.host_level()
        return
    assert x86_host.host_level() == name
    have = x86_host.host_features()
    assert x86_host.level(name).features <= have <= real
    for above in x86_host.LEVEL_NAMES[:x86_host.LEVEL_NAMES.index(name)]:
        assert not x86_host.level(above).features <= have
    assert str(resolve_target("x86").target.attrs["mcpu"]) == x86_host.level(name).mcpu


def test_a_forced_level_never_raises_the_host(monkeypatch):
    """On an AVX2-only machine (simulated: its features), forcing avx512 is an error, not a SIGILL later."""
    monkeypatch.setattr(x86_host, "real_host_features", lambda: x86_host.level("avx2").features)
    monkeypatch.setenv(x86_host.LEVEL_ENV, "avx512")
    with pytest.raises(CPUFeatureError, match="avx512vpopcntdq.*can only lower"):
        x86_host.host_features()
    monkeypatch.setenv(x86_host.LEVEL_ENV, "avx3")
    with pytest.raises(CPUFeatureError, match="not an x86 level"):
        x86_host.host_features()


def test_x86_target_leaves_out_what_the_cpu_model_has_and_this_host_does_not(monkeypatch):
    """A Zen 4 whose hypervisor hides AVX-512: LLVM names it znver4, /proc/cpuinfo has no avx512*."""
    monkeypatch.delenv(x86_host.LEVEL_ENV, raising=False)
    monkeypatch.setattr(x86_host, "host_cpu_name", lambda: "znver4")
    monkeypatch.setattr(x86_host, "real_host_features",
                        lambda: x86_host.level("avx2").features | {"aes", "pclmul", "sha", "adx", "sse4a"})
    spec = resolve_target("x86")
    assert str(spec.target.attrs["mcpu"]) == "znver4" and "-avx512f" in list(spec.target.attrs["mattr"])
    assert not x86_host.missing_features(spec.required_features)
    assert spec.popcount_isa.startswith("avx2")


# ------------------------------------------------------------------------------------------------ the SIGILL guard


def test_code_for_features_the_host_lacks_is_built_but_never_run(monkeypatch, tmp_path):
    """A host of level sse2 (forced; any x86-64 CPU is at least that): AVX2 code compiles, its asm is there, and
    every way of running it raises CPUFeatureError naming avx2 and what to do."""
    monkeypatch.setenv(x86_host.LEVEL_ENV, "sse2")
    torch.manual_seed(0)
    model, x = randomize_batchnorm(Net()), torch.randn(1, 3, 8, 8)
    cm = tvm_bnn.compile(model, "x86-avx2", example_inputs=(x,), progress=False)  # cross builds are legitimate
    assert "vpshufb" in _asm(cm.executable) and "avx2" in cm.required_features
    for run in (lambda: cm(x), lambda: cm.time(x), cm.profile):
        with pytest.raises(CPUFeatureError, match=r"cannot (run|profile) target 'x86-avx2'.*avx2.*x86-portable"):
            run()
    path = cm.export(str(tmp_path / "avx2.so"))  # a pinned CPU: one build, as compiled
    meta = json.load(open(path + ".tvm_bnn.json"))
    assert meta["levels"] == [] and "avx2" in meta["required_features"]
    with pytest.raises(CPUFeatureError, match="avx2"):
        tvm_bnn.load(path)
    with pytest.raises(CPUFeatureError, match="cannot tune target 'x86-avx2'"):
        tvm_bnn.tune(model, "x86-avx2", example_inputs=(x,), trials=1, work_dir=str(tmp_path / "tune"))
    monkeypatch.delenv(x86_host.LEVEL_ENV)
    need_isa(*cm.required_features, what="refusals checked, run skipped")
    assert_float_close(tvm_bnn.load(path)(x), cm(x))


def test_libraries_of_the_earlier_format_are_checked_from_their_target(monkeypatch, tmp_path):
    """Metadata written before required_features existed (format 1: target_json as a Python literal)."""
    monkeypatch.delenv(x86_host.LEVEL_ENV, raising=False)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    path = tvm_bnn.compile(randomize_batchnorm(Net()), "x86-popcnt", example_inputs=(x,),
                           progress=False).export(str(tmp_path / "old.so"))
    meta = json.load(open(path + ".tvm_bnn.json"))
    old = {k: v for k, v in meta.items() if k not in ("format", "required_features", "levels")}
    old["target_json"] = str({"kind": "llvm", "tag": "", "keys": ("cpu",), "num-cores": 2, "mcpu": "nehalem"})
    json.dump(old, open(path + ".tvm_bnn.json", "w"))
    monkeypatch.setenv(x86_host.LEVEL_ENV, "sse2")
    with pytest.raises(CPUFeatureError, match="popcnt"):
        tvm_bnn.load(path)
    monkeypatch.delenv(x86_host.LEVEL_ENV)
    need_isa(*meta["required_features"])
    loaded = tvm_bnn.load(path)
    assert list(loaded.required_features) == meta["required_features"]
    loaded(x)


# ------------------------------------------------------------------------------------------ the portable library

EXPECT = {  # per level: an instruction its binary kernels must use, and one they must not
    "avx512": ("vpopcntq", None),
    "avx2": ("vpshufb", "vpopcntq"),
    "popcnt": ("popcnt", "vpopcntq"),
    "sse2": (None, "popcnt"),
}


@pytest.mark.parametrize("name", x86_host.LEVEL_NAMES)
def test_every_level_of_the_portable_library_matches_pytorch(portable, monkeypatch, name):
    model, x, ref, cm, path = portable
    variant = cm.variants[x86_host.LEVEL_NAMES.index(name)]
    assert variant.level == name and variant.entry == f"main_{name}"
    expect, forbid = EXPECT[name]
    asm = _asm(variant.executable)
    assert (expect is None or expect in asm) and (forbid is None or forbid not in asm), name
    assert "zmm" not in asm or name == "avx512"
    need_isa(*x86_host.level(name).features)
    monkeypatch.delenv(x86_host.LEVEL_ENV, raising=False)
    by_argument = tvm_bnn.load(path, level=name)
    assert by_argument.level == name
    out = by_argument(x)
    assert_float_close(out, ref)
    monkeypatch.setenv(x86_host.LEVEL_ENV, name)
    by_environment = tvm_bnn.load(path)
    assert by_environment.level == name
    np.testing.assert_array_equal(by_environment(x), out)
    cm.select_level(name)
    np.testing.assert_array_equal(cm(x), out)
    monkeypatch.delenv(x86_host.LEVEL_ENV)
    cm.select_level(None)


def test_the_portable_library_runs_the_best_level_here(portable, no_forced_level):
    _, x, ref, cm, path = portable
    loaded = tvm_bnn.load(path)
    assert loaded.level == cm.level == x86_host.host_level()
    assert loaded.levels == list(x86_host.LEVEL_NAMES)
    assert_float_close(loaded(x), ref)
    meta = json.load(open(path + ".tvm_bnn.json"))
    assert meta["target"] == "x86-portable" and [lv["name"] for lv in meta["levels"]] == list(x86_host.LEVEL_NAMES)
    assert meta["required_features"] == ["cmov", "sse", "sse2"]  # what running any of it needs


def test_a_level_above_the_host_is_refused(portable, monkeypatch):
    _, x, _, cm, path = portable
    monkeypatch.setenv(x86_host.LEVEL_ENV, "sse2")
    assert tvm_bnn.load(path).level == "sse2"
    with pytest.raises(CPUFeatureError, match="level 'avx2' of target 'x86-portable'.*avx2"):
        tvm_bnn.load(path, level="avx2")
    with pytest.raises(CPUFeatureError, match="avx2"):
        cm.select_level("avx2")
    with pytest.raises(CPUFeatureError, match="holds the levels"):
        tvm_bnn.load(path, level="avx10")


def test_export_of_x86_is_portable_unless_a_cpu_is_pinned(tmp_path, no_forced_level):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    model = randomize_batchnorm(Net())
    cm = tvm_bnn.compile(model, "x86", example_inputs=(x,), progress=False)
    portable = cm.export(str(tmp_path / "portable.so"))
    meta = json.load(open(portable + ".tvm_bnn.json"))
    assert meta["target"] == "x86-portable" and len(meta["levels"]) == len(x86_host.LEVEL_NAMES)
    single = cm.export(str(tmp_path / "host.so"), portable=False)
    meta = json.load(open(single + ".tvm_bnn.json"))
    assert meta["target"] == "x86" and meta["levels"] == []
    assert meta["required_features"] == list(cm.required_features)
    np.testing.assert_array_equal(tvm_bnn.load(single)(x), cm(x))
    assert_float_close(tvm_bnn.load(portable)(x), cm(x))
    with pytest.raises(FileExistsError):  # refused before the levels are built
        cm.export(portable)


def test_loading_prints_nothing(tmp_path, capfd, no_forced_level):
    """A model run before it is exported (the usual flow: cm(x), then cm.export) makes TVM print a warning per
    constant when the library is saved ('Scope Saving') and loaded ('Scope Loaded'): the Relax VM records a memory
    scope per constant when it starts. tvm_bnn's export and load print nothing."""
    import tvm

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    cm = tvm_bnn.compile(randomize_batchnorm(Net()), "x86", example_inputs=(x,), progress=False)
    cm(x)
    capfd.readouterr()
    path = cm.export(str(tmp_path / "m.so"), portable=False)
    tvm_bnn.load(path)(x)
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    shutil.copy(path, tmp_path / "copy.so")  # a file this process has not loaded yet
    tvm.runtime.load_module(str(tmp_path / "copy.so"))
    assert capfd.readouterr().err.count("Scope Loaded") >= 4  # what TVM itself prints: one line per weight


def test_the_stderr_filter_keeps_everything_else(capfd):
    from tvm_bnn.core.tvm_stderr import quiet_tvm_stderr

    capfd.readouterr()
    with quiet_tvm_stderr():
        os.write(2, b"[00:00:00] /project/src/runtime/vm/executable.cc:340: Warning: Scope Loaded:\n")
        os.write(2, b"[00:00:00] /project/src/runtime/module.cc:1: Error: something real\n")
    assert capfd.readouterr().err == "[00:00:00] /project/src/runtime/module.cc:1: Error: something real\n"


def test_inspect_shows_the_levels_and_the_one_this_host_gets(portable, monkeypatch, capsys):
    from tvm_bnn.cli import main

    path = portable[4]
    for forced in (None, "sse2"):
        if forced:
            monkeypatch.setenv(x86_host.LEVEL_ENV, forced)
        else:
            monkeypatch.delenv(x86_host.LEVEL_ENV, raising=False)
        assert main(["inspect", path]) == 0
        text = capsys.readouterr().out
        assert "target: x86-portable" in text
        for name in x86_host.LEVEL_NAMES:
            marked = name == (forced or x86_host.host_level())
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(name + " "))
            assert ("<- this host" in line) == marked, line
        assert f"runs here: level {forced or x86_host.host_level()}" in text
