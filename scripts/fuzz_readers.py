#!/usr/bin/env python3
"""The long seeded fuzz pass over apr's model readers (the CI test runs a short one).

    python scripts/fuzz_readers.py --cases 5000 --seed 1 [--formats apr,gguf] [--json out.json]

Every case is a mutation of a tiny valid model (apr_core.fuzzing) loaded as the commands load
one; each must end in success or a one-line error. The first traceback stops the run and is
printed with its case number and file (kept under the work directory to reproduce it).
Prints cases, outcomes and seconds per format.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apr_core.fuzzing import FORMATS, fuzz, seed_files  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000, help="cases per format (GGUF gets a quarter)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="apr-fuzz-"))
    seeds = seed_files(work / "seeds")
    rows = []
    for fmt in args.formats.split(","):
        cases = args.cases // 4 if fmt in ("gguf", "hf") else args.cases
        start = time.perf_counter()
        counts = fuzz(fmt, cases, args.seed, work, seeds)
        rows.append({"format": fmt, "cases": cases, "loaded": counts.get(0, 0), "refused": counts.get(2, 0),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{fmt:<12} {cases:>6} cases  {rows[-1]['loaded']:>6} loaded  {rows[-1]['refused']:>6} refused "
              f"(one line)  0 tracebacks  {rows[-1]['seconds']:>7.1f}s", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2) + "\n")
    shutil.rmtree(work)  # kept only when a traceback stopped the run, to reproduce it
    return 0


if __name__ == "__main__":
    sys.exit(main())
