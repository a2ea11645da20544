"""Hypothesis profiles for the differential fuzzer, chosen by the HYPOTHESIS_PROFILE environment variable.

* ``ci`` (default): reproducible (derandomize, no example database), sized to finish in a few minutes on 2 cores.
* ``long``: thousands of examples, random seeds, failures saved in ``.hypothesis/`` and replayed first next time:
  ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/fuzz`` or ``.venv/bin/python bench/fuzz_long.py``.
* ``dev``: a handful of examples, for working on the generator.
* ``seeded``: the CI sizes with hypothesis' seed instead of derandomize (which ignores ``--hypothesis-seed``), no
  example database: ``HYPOTHESIS_PROFILE=seeded ... pytest tests/fuzz --hypothesis-seed=N`` shakes out flakes.

The CI sizes keep ``pytest tests/fuzz`` at about 3.5 minutes on the 2-core machine (explicit examples and
tests/fuzz/test_regressions.py included).

``FUZZ_EXAMPLES[profile][target]`` is the number of examples (compiled models; each holds 1-2 independent random
networks) per target; ``TVM_BNN_FUZZ_EXAMPLES=N`` overrides the x86 count (C / aarch64 scale with it).
"""
import logging
import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("long", **_COMMON)
settings.register_profile("dev", derandomize=True, database=None, **_COMMON)
settings.register_profile("seeded", database=None, **_COMMON)
# replay + generate only: no shrinking (for measuring how many examples fit in a time budget)
settings.register_profile("timing", derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON)

# torch.export logs every traced graph at DEBUG; pytest would print thousands of lines with a failing example
logging.getLogger("torch.__trace").setLevel(logging.INFO)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

FUZZ_EXAMPLES = {
    "ci": {"chains": 40, "x86": 50, "onnx": 16, "c": 14, "aarch64": 10},
    "timing": {"chains": 40, "x86": 50, "onnx": 16, "c": 14, "aarch64": 10},
    "long": {"chains": 2000, "x86": 2000, "onnx": 300, "c": 300, "aarch64": 200},
    "dev": {"chains": 4, "x86": 5, "onnx": 2, "c": 2, "aarch64": 2},
    "seeded": {"chains": 40, "x86": 50, "onnx": 16, "c": 14, "aarch64": 10},
}


def fuzz_examples(target: str) -> int:
    counts = FUZZ_EXAMPLES.get(PROFILE, FUZZ_EXAMPLES["ci"])
    override = os.environ.get("TVM_BNN_FUZZ_EXAMPLES")
    if override:
        return max(1, int(override) * counts[target] // counts["x86"])
    return counts[target]
