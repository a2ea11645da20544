"""TVM's runtime writes some warnings straight to file descriptor 2 (C++ ``LOG(WARNING)``, no level to set): the
Relax VM executable prints ``executable.cc: Warning: Scope Loaded:`` once per constant when a library loads (and
``Scope Saving:`` when one is exported), hundreds of lines for a real model. ``quiet_tvm_stderr`` captures fd 2
around such a call and passes every other line through unchanged (errors stay visible); the dropped lines go to
the ``tvm_bnn`` logger at DEBUG level, so ``logging.getLogger("tvm_bnn").setLevel(logging.DEBUG)`` (with a handler)
shows them."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

NOISE = re.compile(r"executable\.cc:\d+: Warning: Scope (Loaded|Saving):")
log = logging.getLogger("tvm_bnn")


@contextlib.contextmanager
def quiet_tvm_stderr():
    """Drop TVM's per-constant ``Scope Loaded/Saving`` warnings written to fd 2 inside the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no fd 2 to redirect (embedded interpreter): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = []
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if NOISE.search(line):
                    log.debug("TVM: %s", line.rstrip())
                else:
                    kept.append(line)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
