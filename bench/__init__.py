"""treadle benchmarks: one module per workload, run by ``python bench/run.py``."""
