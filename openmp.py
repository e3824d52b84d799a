"""How long torch's idle OpenMP threads spin before they sleep, on a CPU other work shares.

The CPU build of torch runs each operation on a team of OpenMP threads (GNU libgomp), which spin for a
while at every barrier before they sleep (`GOMP_SPINCOUNT`, 300,000 by default). On a machine with as many
cores as threads, that is fastest while nothing else runs; as soon as another busy process (a training run,
the browser playing `slowfast-vgen play`) takes one core, the spinning thread holds it, the team waits for
the one that was descheduled, and every operation crawls. With a short spin the threads sleep soon instead.
Measured on 2 cores (docs/benchmarks.md, "OpenMP's spin"): a chunk of the ToyWorld model took 0.37 s alone
and about 20 s beside two busy processes at the default; 0.39 s and 2.4 s with a spin of 10,000.

libgomp reads its environment once, when torch loads it, so this only takes effect in a process that
imports this package before torch (the `slowfast-vgen` command); a value you set yourself is kept.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "10000"


def spin_briefly() -> bool:
    """Set `GOMP_SPINCOUNT` (unless set, or `OMP_WAIT_POLICY` is) before torch loads OpenMP; True if set."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
