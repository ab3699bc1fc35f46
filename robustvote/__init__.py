"""robustvote: adversarial robustness benchmarks for hard-label voting ensembles."""

__version__ = "0.1.0"
