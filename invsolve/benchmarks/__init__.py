"""Benchmarks with known answers: the Gaussian-mixture posterior benchmark of MCGdiff."""

from invsolve.benchmarks.gmm_problem import GMMProblem, make_gmm_problem
from invsolve.benchmarks.posterior import BenchmarkConfig, BenchmarkReport, run_posterior_benchmark
from invsolve.benchmarks.report import markdown_table, write_report
from invsolve.benchmarks.sliced_wasserstein import sliced_wasserstein

__all__ = [
    "BenchmarkConfig",
    "BenchmarkReport",
    "GMMProblem",
    "make_gmm_problem",
    "markdown_table",
    "run_posterior_benchmark",
    "sliced_wasserstein",
    "write_report",
]
