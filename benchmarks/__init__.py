"""Benchmarks for ntaylor_nb: each measure runs the package side by side with a baseline in one process and reports ratios."""
