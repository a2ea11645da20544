"""Hypothesis profiles for the differential fuzzer, chosen by the HYPOTHESIS_PROFILE environment variable.

* ``ci`` (default): reproducible (derandomize, no example database), sized to finish in a few minutes on 2 cores.
* ``long``: thousands of examples, random seeds, failures saved in ``.hypothesis/`` and replayed first next time:
  ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/fuzz``.
* ``sweep``: the long sizes, random seeds (``--hypothesis-seed`` makes a run reproducible), no example database, no
  explain phase: what bench/fuzz_long.py runs, in chunks, each chunk a pytest run with a seed of its own (a failure
  replayed from a database would end every chunk at once).
* ``dev``: a handful of examples, for working on the generator.
* ``seeded``: the CI sizes with hypothesis' seed instead of derandomize (which ignores ``--hypothesis-seed``), no
  example database: ``HYPOTHESIS_PROFILE=seeded ... pytest tests/fuzz --hypothesis-seed=N`` shakes out flakes.

The CI sizes keep ``pytest tests/fuzz`` at about 3.5 minutes on the 2-core machine (explicit examples and
tests/fuzz/test_regressions.py included); the Cortex-M target adds under a minute.

``FUZZ_EXAMPLES[profile][target]`` is the number of examples (compiled models; each holds 1-2 independent random
networks) per target. Overrides, from the environment:

* ``TVM_BNN_FUZZ_COUNTS="x86=10000,cortexm=1000"``: the count of each target named (targets: the keys below);
* ``TVM_BNN_FUZZ_EXAMPLES=N``: the x86 count, every other target scaled with it (a target named in
  TVM_BNN_FUZZ_COUNTS keeps that count).

``TVM_BNN_FUZZ_RECORD=path.jsonl`` appends one JSON line per test case hypothesis runs (test, phase, status, seconds;
for the minimal failing examples also the example, the error and the ``@reproduce_failure`` decorator): the counts
and failures bench/fuzz_long.py reports.

``TVM_BNN_FUZZ_KNOWN=known.json`` (a list of ``{"name": ..., "pattern": regex}``, read at the start of the run):
a failure whose ``"ExceptionType: message"`` matches a pattern is a known one: recorded (status "known", with the
example and the error, in the TVM_BNN_FUZZ_RECORD file) and rejected, so that hypothesis goes on looking for other
failures instead of stopping ~1000 examples after the first and shrinking it again (bench/fuzz_long.py adds each
failure it has shrunk once). The same idea as strategies.OPEN_BUGS, told by the error instead of the spec.
"""
import functools
import json
import logging
import os
import re
import time

from hypothesis import HealthCheck, Phase, event, reject, settings
from hypothesis.errors import HypothesisException

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("long", **_COMMON)
settings.register_profile("sweep", database=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink], **_COMMON)
settings.register_profile("dev", derandomize=True, database=None, **_COMMON)
settings.register_profile("seeded", database=None, **_COMMON)
# replay + generate only: no shrinking (for measuring how many examples fit in a time budget)
settings.register_profile("timing", derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON)

# torch.export logs every traced graph at DEBUG; pytest would print thousands of lines with a failing example
logging.getLogger("torch.__trace").setLevel(logging.INFO)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

_CI = {"chains": 40, "x86": 50, "onnx": 16, "c": 14, "aarch64": 10, "cortexm": 20, "cortexm55": 6}
_LONG = {"chains": 2000, "x86": 2000, "onnx": 300, "c": 300, "aarch64": 200, "cortexm": 1000, "cortexm55": 300}
FUZZ_EXAMPLES = {
    "ci": _CI,
    "timing": _CI,
    "seeded": _CI,
    "long": _LONG,
    "sweep": _LONG,
    "dev": {"chains": 4, "x86": 5, "onnx": 2, "c": 2, "aarch64": 2, "cortexm": 2, "cortexm55": 1},
}


def parse_counts(text: str) -> dict:
    """``"x86=10000,cortexm=1000"`` -> {"x86": 10000, "cortexm": 1000}; unknown targets are an error."""
    counts = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, n = item.partition("=")
        if not sep or name.strip() not in _CI:
            raise ValueError(f"bad fuzz count {item!r}: want target=N with target one of {', '.join(_CI)}")
        counts[name.strip()] = max(1, int(n))
    return counts


def fuzz_examples(target: str) -> int:
    counts = FUZZ_EXAMPLES.get(PROFILE, FUZZ_EXAMPLES["ci"])
    explicit = parse_counts(os.environ.get("TVM_BNN_FUZZ_COUNTS", ""))
    if target in explicit:
        return explicit[target]
    override = os.environ.get("TVM_BNN_FUZZ_EXAMPLES")
    if override:
        return max(1, int(override) * counts[target] // counts["x86"])
    return counts[target]


_KNOWN_HIT = []  # the known failure of the test case running now (at most one), for its record


def _known_failures():
    path = os.environ.get("TVM_BNN_FUZZ_KNOWN")
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [(k["name"], re.compile(k["pattern"], re.S)) for k in json.load(f)]


def _reject_known(inner, known):
    @functools.wraps(inner)
    def test(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except HypothesisException:  # assume(), reject(), ...
            raise
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            name = next((n for n, pattern in known if pattern.search(text)), None)
            if name is None:
                raise
            _KNOWN_HIT[:] = [dict(known=name, error=text[:4000],
                                  example=", ".join(f"{k}={v!r}" for k, v in kwargs.items()))]
            event(f"known failure: {name}")
            reject()

    return test


def pytest_collection_modifyitems(items):
    known = _known_failures()
    if not known:
        return
    for item in items:
        handle = getattr(getattr(item, "obj", None), "hypothesis", None)
        if handle is not None:  # hypothesis' documented hook for wrapping the test it runs
            handle.inner_test = _reject_known(handle.inner_test, known)


def _recorder(path):
    def record(obs):
        if obs.type != "test_case":
            return
        row = {"test": obs.property, "how": obs.how_generated, "phase": obs.metadata.phase, "status": obs.status,
               "seconds": round(sum(v for k, v in obs.timing.items() if k.startswith("execute:")), 3),
               "time": round(time.time(), 1)}
        if _KNOWN_HIT:
            row.update(_KNOWN_HIT.pop(), status="known")
        if obs.status == "failed":
            row["reason"] = obs.status_reason
        if obs.how_generated == "minimal failing test case":
            tb = obs.metadata.traceback or ""
            row.update(example=obs.representation, traceback=tb,
                       error=tb.strip().splitlines()[-1] if tb.strip() else "",
                       reproduce=obs.metadata.reproduction_decorator, notes=obs.metadata.notes)
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    return record


if os.environ.get("TVM_BNN_FUZZ_RECORD"):
    from hypothesis.internal import observability

    observability.OBSERVABILITY_COLLECT_COVERAGE = False  # a line tracer per example: slow, and unused here
    observability.add_observability_callback(_recorder(os.environ["TVM_BNN_FUZZ_RECORD"]))
