"""`trimtab bench`: every method x scenario x seed, resumable, with reports and plots."""

from trimtab.bench.config import BenchCell, BenchConfig, load_bench_config, parse_bench_config
from trimtab.bench.runner import BenchRun, run_bench

__all__ = ["BenchCell", "BenchConfig", "BenchRun", "load_bench_config", "parse_bench_config",
           "run_bench"]
