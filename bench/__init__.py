"""Benchmarks. Each module runs alone (``python -m bench.NAME [--quick]``) and prints ratios
against a baseline measured in the same run; ``python -m bench`` runs them all."""
