"""`python -m bench` (`make bench`): every benchmark that needs no running service, in turn.

Each writes its Markdown table under bench/results/ with the command and date that made it.
The load test needs a running `headhub up` (`make bench-load`); the transfer table trains heads
and a from-scratch baseline for about 20 minutes on 2 cores (`python -m bench.transfer`).
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = ["bench.extractor_bench", "bench.kernels_bench", "bench.training_bench"]


def main() -> None:
    for module in BENCHES:
        print(f"== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module], check=True)


if __name__ == "__main__":
    main()
