"""Times the reference build and the full `trimtab demo`, and checks determinism.

Usage:  python benchmarks/demo_timing.py [--out benchmarks/results/demo]

1. builds the synthetic references into a fresh cache folder (timed: target <= 5 min);
2. runs the full demo with the references cached (timed: target <= 10 min);
3. runs the demo a second time (by default with a subset of the methods, one of them
   sampling during training, to keep the benchmark short) and compares every metric of
   those runs with the first (determinism);
and writes `timing.json` plus the demo's results.json/report.md/safety_utility.png to --out.
Run it on an otherwise idle machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import machine

from trimtab.evaluation.results import RATE_KEYS, write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/demo")
    parser.add_argument("--build-only", action="store_true",
                        help="only time the reference build (writes build_timing.json)")
    parser.add_argument("--determinism-methods", nargs="+", default=["sft", "kl", "gated"],
                        help="methods of the second demo run that checks determinism")
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="trimtab-bench-cache-") as cache:
        os.environ["TRIMTAB_CACHE"] = cache
        from trimtab.demo import DemoConfig, run_demo, world_configs
        from trimtab.worlds.synthetic.build import build_references

        start = time.perf_counter()
        refs = build_references(*world_configs(False), progress=False)
        build_seconds = time.perf_counter() - start
        if args.build_only:
            write_json_atomic(out / "build_timing.json", {
                "command": "python benchmarks/demo_timing.py --build-only",
                "threads": os.environ.get("OMP_NUM_THREADS", "default"),
                "machine": machine(), "reference_build_seconds": round(build_seconds, 1),
                "reference_build_stages": {k: round(v, 1) for k, v in refs.build_seconds.items()},
                "target_seconds": 300})
            print(f"reference build: {build_seconds:.1f} s")
            return

        start = time.perf_counter()
        first = run_demo(DemoConfig(out=str(out), progress=False))
        demo_seconds = time.perf_counter() - start

        with tempfile.TemporaryDirectory() as again:
            second = run_demo(DemoConfig(out=again, progress=False,
                                         methods=args.determinism_methods))

    def metrics(results: dict) -> list[list[float]]:
        rows = [results["reference"], results["base"],
                *(r for r in results["runs"] if r["method"] in args.determinism_methods)]
        return [[row[k] for k in RATE_KEYS] for row in rows]

    timing = {
        "command": "python benchmarks/demo_timing.py",
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "machine": machine(),
        "reference_build_seconds": round(build_seconds, 1),
        "reference_build_stages": {k: round(v, 1) for k, v in refs.build_seconds.items()},
        "demo_seconds_with_cached_references": round(demo_seconds, 1),
        "targets": {"reference_build_seconds": 300, "demo_seconds": 600},
        "deterministic": metrics(first) == metrics(second),
        "determinism_checked_on": args.determinism_methods,
        "per_run_train_seconds": {f"{r['method']} {r['scenario']}": r["train_seconds"]
                                  for r in first["runs"]},
    }
    write_json_atomic(out / "timing.json", timing)
    print(json.dumps(timing, indent=2))


if __name__ == "__main__":
    main()
