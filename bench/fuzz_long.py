"""Long differential fuzzing runs (issues 6 and 19): the hypothesis tests of tests/fuzz, thousands of examples each.

    .venv/bin/python bench/fuzz_long.py                                 # every target, the long profile's counts
    .venv/bin/python bench/fuzz_long.py --counts x86=10000,chains=2000  # these targets, these counts
    .venv/bin/python bench/fuzz_long.py --examples 10000 --emulated 1000 -k "x86 or cortexm or aarch64"
    .venv/bin/python bench/fuzz_long.py -k cortexm --chunk 200 --seed 7 --out /tmp/fuzz-m4

Targets (the keys of tests/fuzz/conftest.py FUZZ_EXAMPLES) and their tests:

    x86      test_differential.py::test_differential_x86       PyTorch frontend, x86 (the host)
    onnx     test_differential.py::test_differential_onnx_x86  ONNX frontend, x86
    c        test_differential.py::test_differential_c         portable C, host gcc
    aarch64  test_differential.py::test_differential_aarch64   aarch64 Linux under qemu-user
    cortexm  test_differential.py::test_differential_cortexm   Cortex-M4 firmware under qemu-system-arm
    cortexm55 test_differential.py::test_differential_cortexm55 Cortex-M55 (Helium) firmware under qemu-system-arm
    chains   test_chains.py::test_chain_before_a_binary_conv   the activation analysis, op chains vs TVM

Choosing targets and counts:

* ``--counts x86=10000,cortexm=1000,...``: the count of each target named; with no ``-k``, only those run;
* ``--examples N``: the x86 count, every other target scaled as in the profile (the old option);
  ``--emulated N``: the count of each emulated target (cortexm, cortexm55, aarch64);
* ``-k EXPR``: a pytest -k expression over the tests above (``x86`` selects x86 and onnx; ``"x86 and not onnx"``);
  targets without a count from the options run the profile's (``long``: 2000 x86, 1000 cortexm ...).

A count is a number of examples *run*: valid examples of the generate phase, passing or failing (examples the test
rejects with ``assume`` are counted apart, as invalid; explicit ``@example``s too). Each target runs in chunks
(``--chunk``, default 1000): one pytest run per chunk, under the ``sweep`` profile (random seeds, no example
database), with seed ``--seed`` + the chunk's number, until the target's count is reached. Chunks are how a count is
reached with bugs around: once hypothesis finds a failure it generates at most ~1000 more examples, then shrinks
and stops; the next chunk goes on with another seed. ``--chunk 0``: one pytest run per target (e.g. with
``--profile long``, whose database replays earlier failures first).

Output in ``--out`` (default a new /tmp/tvm_bnn_fuzz_* directory): ``<target>-<chunk>.log`` (pytest's output, with
--hypothesis-show-statistics), ``<target>.jsonl`` (one line per test case hypothesis ran, tests/fuzz/conftest.py
TVM_BNN_FUZZ_RECORD) and ``summary.txt``: examples run per target and test, the failures, each with its minimal
example (hypothesis shrinks it: paste the spec into tests/fuzz/test_regressions.py), its error and its
``@reproduce_failure`` decorator. The summary is printed at the end (also after Ctrl-C). Exit status 1 if any
example failed.

Set TVM_NUM_THREADS=1 to run two of these side by side on 2 cores (default: 2 threads, tests/conftest.py).
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DIFF = "tests/fuzz/test_differential.py"
TARGETS = {
    "x86": f"{DIFF}::test_differential_x86",
    "onnx": f"{DIFF}::test_differential_onnx_x86",
    "c": f"{DIFF}::test_differential_c",
    "aarch64": f"{DIFF}::test_differential_aarch64",
    "cortexm": f"{DIFF}::test_differential_cortexm",
    "cortexm55": f"{DIFF}::test_differential_cortexm55",
    "chains": "tests/fuzz/test_chains.py::test_chain_before_a_binary_conv",
}
EMULATED = ("cortexm", "cortexm55", "aarch64")
PYTEST = ["-p", "no:logging", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", "--hypothesis-show-statistics",
          "-q", "-rfEs"]


def _fuzz_conftest():
    from tests.fuzz import conftest  # FUZZ_EXAMPLES, parse_counts: importing it loads no torch / TVM

    return conftest


def selected_targets(k, env):
    """The targets whose test pytest -k ``k`` selects (a collection run)."""
    if not k:
        return list(TARGETS)
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-k", k,
                          *sorted({v.split("::")[0] for v in TARGETS.values()})],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    ids = {line.strip() for line in out.stdout.splitlines()}
    return [t for t, node in TARGETS.items() if node in ids]


def target_counts(args, env):
    conf = _fuzz_conftest()
    explicit = conf.parse_counts(args.counts or "")
    if args.emulated:
        explicit.update({t: args.emulated for t in EMULATED})
    if args.examples:
        explicit.setdefault("x86", args.examples)
    names = selected_targets(args.k, env) if args.k or not args.counts else list(explicit)
    base = conf.FUZZ_EXAMPLES.get(args.profile, conf.FUZZ_EXAMPLES["ci"])
    counts = {}
    for t in names:
        if t in explicit:
            counts[t] = explicit[t]
        elif args.examples:
            counts[t] = max(1, args.examples * base[t] // base["x86"])
        else:
            counts[t] = base[t]
    return counts


def error_of(traceback: str, lines: int = 12) -> str:
    """The exception and its message from a formatted traceback: pytest's (its ``E`` lines) or Python's (the lines
    after the last frame)."""
    tb = traceback.splitlines()
    marked = [line[1:].strip() for line in tb if line.startswith("E ")]
    if marked:
        return "\n".join(marked[:lines])
    starts = [i for i, line in enumerate(tb) if line.startswith("Traceback (most recent call last)")]
    i = starts[-1] + 1 if starts else 0
    while i < len(tb) and (tb[i].startswith(" ") or not tb[i].strip()):
        i += 1
    return "\n".join(tb[i:i + lines])


def known_pattern(error: str) -> str:
    """A regex for failures like ``error`` (its first line; the first two when the first is short, as numpy's
    "AssertionError: / Arrays are not equal / output 0 vs PyTorch"): layer names and numbers are wildcards."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    key = lines[:2] if len(lines[0]) < 40 else lines[:1]
    out = []
    for line in key:
        parts = re.split(r"(branches\.[\w.]+|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", line)
        out.append("".join(re.escape(p) if i % 2 == 0 else (r"\S+" if p.startswith("branches") else r"[-+.\de]+")
                           for i, p in enumerate(parts)))
    return "^" + r"\s+".join(out)


def add_known(path, rows, where):
    """Append the failures ``rows`` (minimal failing examples) to the known list at ``path``: later chunks record
    and reject them. Only the harness' own assertions (AssertionError: specific messages); other errors stay
    failures until added by hand."""
    known = json.load(open(path)) if os.path.exists(path) else []
    added = []
    for r in rows:
        error = error_of(r.get("traceback", ""), 6)
        if not error.startswith("AssertionError"):
            continue
        pattern = known_pattern(error)
        if any(re.search(k["pattern"], error, re.S) for k in known):
            continue
        name = " / ".join(line.strip() for line in error.splitlines()[:3] if line.strip())[:160]
        known.append({"name": f"{r['test'].split('::')[-1]}: {name}", "pattern": pattern, "from": where})
        added.append(known[-1]["name"])
    if added:
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(known, f, indent=1)
        os.replace(tmp, path)
    return added


def read_rows(path, offset):
    """JSON lines of ``path`` from byte ``offset``: (rows, new offset)."""
    if not os.path.exists(path):
        return [], offset
    with open(path) as f:
        f.seek(offset)
        text = f.read()
        return [json.loads(line) for line in text.splitlines() if line.strip()], offset + len(text.encode())


class Tally:
    def __init__(self, target, count):
        self.target, self.count = target, count
        self.passed = self.failed = self.known = self.invalid = self.explicit = self.chunks = 0
        self.known_hits = {}  # known failure -> [row], examples of the generate phase that hit it
        self.seconds = 0.0
        self.failures = []  # (chunk, seed, row)
        self.notes = []  # chunks that ended without running examples, and why

    @property
    def run(self):
        return self.passed + self.failed + self.known

    def add(self, rows, chunk, seed):
        for r in rows:
            if r["how"] == "minimal failing test case":
                self.failures.append((chunk, seed, r))
            elif r["how"] == "explicit example":
                self.explicit += 1
            elif r["phase"] == "generate":
                if r["status"] == "known":
                    self.known += 1
                    self.known_hits.setdefault(r["known"], []).append(r)
                elif r["status"] == "gave_up":
                    self.invalid += 1
                elif r["status"] == "failed":
                    self.failed += 1
                else:
                    self.passed += 1


def run_target(target, count, args, env, seed, tallies):
    tally = Tally(target, count)
    tallies.append(tally)  # the summary after Ctrl-C has the chunks done so far
    record = os.path.join(args.out, f"{target}.jsonl")
    offset = os.path.getsize(record) if os.path.exists(record) else 0
    t0 = time.time()
    while tally.run < count:
        n = count - tally.run if not args.chunk else min(args.chunk, count - tally.run)
        chunk_seed = seed + tally.chunks
        log = os.path.join(args.out, f"{target}-{tally.chunks:03d}.log")
        chunk_env = dict(env, TVM_BNN_FUZZ_COUNTS=f"{target}={n}", TVM_BNN_FUZZ_RECORD=record,
                         TVM_BNN_FUZZ_KNOWN=args.known)
        cmd = [sys.executable, "-m", "pytest", TARGETS[target], *PYTEST, f"--hypothesis-seed={chunk_seed}"]
        c0 = time.time()
        before, rc = tally.run, None
        try:
            with open(log, "w") as f:
                f.write(f"# {' '.join(cmd)}\n# TVM_BNN_FUZZ_COUNTS={target}={n} HYPOTHESIS_PROFILE={args.profile}\n")
                f.flush()
                rc = subprocess.call(cmd, cwd=ROOT, env=chunk_env, stdout=f, stderr=subprocess.STDOUT)
        finally:  # after Ctrl-C too: the examples the chunk ran count
            rows, offset = read_rows(record, offset)
            tally.add(rows, tally.chunks, chunk_seed)
            tally.chunks += 1
            tally.seconds = time.time() - t0
        new_failures = [r for c, _, r in tally.failures if c == tally.chunks - 1]
        print(f"[{target} chunk {tally.chunks - 1}] seed {chunk_seed}: {tally.run - before} examples run "
              f"({tally.run}/{count}), {len(new_failures)} failure(s), rc {rc}, {time.time() - c0:.0f} s  {log}",
              flush=True)
        for r in new_failures:
            print("    " + error_of(r.get("traceback", ""), 1), flush=True)
        if args.learn:
            for name in add_known(args.known, new_failures, log):
                print(f"    now known: {name}", flush=True)
        if tally.run == before:  # skipped, not collected, an explicit example failed, ...: more chunks won't help
            with open(log) as f:
                tail = f.read().strip().splitlines()[-1:]
            tally.notes.append(f"chunk {tally.chunks - 1} ran no example (rc {rc}): {' '.join(tail)}  ({log})")
            break
    return tally


def summary(tallies, args, wall):
    out = [f"fuzz_long: profile {args.profile}, chunk {args.chunk}, out {args.out}, wall {wall / 60:.1f} min", "",
           f"{'target':8} {'test':54} {'run':>6} {'passed':>6} {'failed':>6} {'known':>6} {'invalid':>7} "
           f"{'explicit':>8} {'chunks':>6} {'minutes':>7}"]
    for t in tallies:
        out.append(f"{t.target:8} {TARGETS[t.target].split('/')[-1]:54} {t.run:6} {t.passed:6} {t.failed:6} "
                   f"{t.known:6} {t.invalid:7} {t.explicit:8} {t.chunks:6} {t.seconds / 60:7.1f}")
    out.append(f"{'total':63} {sum(t.run for t in tallies):6} {sum(t.passed for t in tallies):6} "
               f"{sum(t.failed for t in tallies):6} {sum(t.known for t in tallies):6}")
    out.append("(run = passed + failed + known: examples of the generate phase; failed: failures hypothesis went on "
               "to shrink; known: failures matching the known list, recorded and rejected)")
    for t in tallies:
        for note in t.notes:
            out.append(f"  {t.target}: {note}")
    hits = [(t, name, rows) for t in tallies for name, rows in t.known_hits.items()]
    if hits:
        out += ["", "known failures hit (examples of the generate phase; the smallest one shown):"]
        for t, name, rows in hits:
            small = min(rows, key=lambda r: len(r.get("example", "")))
            out += [f"  {t.target}: {len(rows)} x {name}", f"      {small.get('example', '')}"]
    failures = [(t, c, s, r) for t in tallies for c, s, r in t.failures]
    out += ["", f"{len(failures)} minimal failing example(s) (one per distinct error location per chunk)"]
    for i, (t, c, s, r) in enumerate(failures, 1):
        out += ["", f"--- {i}. {t.target}, chunk {c} (--hypothesis-seed={s}), {r.get('reason', '')}",
                r.get("example", ""), "", error_of(r.get("traceback", "")), "", str(r.get("reproduce") or "")]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", help="per-target counts: x86=10000,cortexm=1000,aarch64=1000,chains=2000")
    parser.add_argument("--examples", type=int, help="x86 examples (other targets scaled with it)")
    parser.add_argument("--emulated", type=int, help="examples for each emulated target (cortexm, aarch64)")
    parser.add_argument("-k", help="pytest -k expression selecting targets' tests, e.g. x86, 'cortexm or aarch64'")
    parser.add_argument("--chunk", type=int, default=1000, help="examples per pytest run (0: one run per target)")
    parser.add_argument("--seed", type=int, help="seed of the first chunk (default: random)")
    parser.add_argument("--profile", default="sweep", help="hypothesis profile (tests/fuzz/conftest.py)")
    parser.add_argument("--out", help="directory for the logs and summary.txt (default: a new one in /tmp)")
    parser.add_argument("--known", help="known failures (JSON list of name/pattern), recorded and rejected "
                                        "(default: OUT/known.json)")
    parser.add_argument("--no-learn", dest="learn", action="store_false",
                        help="do not add the failures shrunk by a chunk to the known list")
    args = parser.parse_args()
    args.out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="tvm_bnn_fuzz_"))
    os.makedirs(args.out, exist_ok=True)
    args.known = os.path.abspath(args.known or os.path.join(args.out, "known.json"))
    env = dict(os.environ, HYPOTHESIS_PROFILE=args.profile)
    env.setdefault("TVM_NUM_THREADS", "2")
    env.pop("TVM_BNN_FUZZ_EXAMPLES", None)  # counts are given per chunk
    counts = target_counts(args, env)
    if not counts:
        parser.error("no target selected")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = commit.stdout.strip() or "? (not a git checkout)"
    print(f"fuzz_long: {', '.join(f'{t}={n}' for t, n in counts.items())}; seed {seed}; commit "
          f"{commit}; TVM_NUM_THREADS={env['TVM_NUM_THREADS']}; out {args.out}", flush=True)
    tallies, t0 = [], time.time()
    try:
        for i, (target, count) in enumerate(counts.items()):
            run_target(target, count, args, env, seed + 1000 * i, tallies)
    except KeyboardInterrupt:
        print("interrupted: the summary so far", flush=True)
    text = summary(tallies, args, time.time() - t0)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print("\n" + text)
    return 1 if any(t.failed or t.failures for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
