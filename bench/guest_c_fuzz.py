"""The long sanitizer fuzz run of the C guest library (agents/guest-c): frame
decoder, JSON parser, PDU validator and guest state machine built with
AddressSanitizer + UBSan (abort on the first report), fed mutated frames.

    python bench/guest_c_fuzz.py --iterations 1000000 --seed 1

Last stdout line: the fuzzer's JSON summary plus the wall time and machine.
A non-zero ``findings`` (or a sanitizer report, which stops the run) fails it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _bench

C_DIR = os.path.join(_bench.REPO, "agents", "guest-c")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    build = tempfile.mkdtemp(prefix="gha-fuzz-")
    _bench.progress(f"building the sanitizer fuzzer in {build}")
    subprocess.run(["make", "-s", "-C", C_DIR, f"BUILD={build}", "sanitize"], check=True)
    _bench.progress(f"fuzzing {args.iterations} mutated frames (seed {args.seed})")
    started = time.monotonic()
    proc = subprocess.run(
        [
            os.path.join(build, "san", "gh-fuzz"),
            "--iterations",
            str(args.iterations),
            "--seed",
            str(args.seed),
        ],
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-8000:])
        print(json.dumps({"findings": "sanitizer or invariant failure", "rc": proc.returncode}))
        return 1
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(seed=args.seed, seconds=round(elapsed, 1), machine=_bench.machine())
    print(json.dumps(result))
    return 0 if result["findings"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
