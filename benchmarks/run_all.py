"""Run every benchmark in this folder (``make bench``): each writes JSON and a plot or table under benchmarks/results/.

    python benchmarks/run_all.py [--quick]

``--quick`` is passed on to each benchmark (a smoke test of the scripts, not a measurement).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["llc_vs_devinterp.py", "refined_llc_heads.py", "llc_checkpoints.py", "ground_truth_vs_devinterp.py",
              "fast_paths.py", "hand_backward.py", "compiled_training.py", "noise_dtype.py", "se_calibration.py", "allocator.py",
              "gpu_check.py"]
#: exit code of a benchmark that cannot run on this machine (gpu_check.py without a CUDA GPU): reported, not failed
NOT_HERE = 3


def main(argv: list[str]) -> int:
    extra = [a for a in argv if a == "--quick"]
    failed = []
    for name in BENCHMARKS:
        print(f"=== {name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / name), *extra])
        verdict = {0: "ok", NOT_HERE: "not run on this machine"}.get(proc.returncode, "FAILED")
        print(f"=== {name}: {verdict} in {time.perf_counter() - start:.0f} s", flush=True)
        if proc.returncode not in (0, NOT_HERE):
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
