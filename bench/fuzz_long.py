"""Long differential fuzzing run (issue 6): the tests in tests/fuzz under the "long" hypothesis profile.

    .venv/bin/python bench/fuzz_long.py                 # thousands of examples per target (hours on 2 cores)
    .venv/bin/python bench/fuzz_long.py --examples 500  # x86 examples (C / aarch64 scale with it)
    .venv/bin/python bench/fuzz_long.py -k x86          # one target

Same as ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/fuzz``. Random seeds each run; a failure is
shrunk, printed with the minimal spec (paste it into tests/fuzz/test_regressions.py as an explicit model) and saved
in .hypothesis/ so the next run replays it first.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, help="x86 examples (default: the long profile's count)")
    parser.add_argument("-k", help="pytest -k expression, e.g. x86, c, aarch64")
    parser.add_argument("--profile", default="long", help="hypothesis profile (tests/fuzz/conftest.py)")
    args = parser.parse_args()
    env = dict(os.environ, HYPOTHESIS_PROFILE=args.profile)
    env.setdefault("TVM_NUM_THREADS", "2")
    if args.examples:
        env["TVM_BNN_FUZZ_EXAMPLES"] = str(args.examples)
    cmd = [sys.executable, "-m", "pytest", "tests/fuzz/test_differential.py", "-p", "no:logging",
           "--hypothesis-show-statistics", "-q"]
    if args.k:
        cmd += ["-k", args.k]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
