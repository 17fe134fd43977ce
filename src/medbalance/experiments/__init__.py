"""Experiments: what a user runs to answer "did synthetic data help?".

Sits between synthesis/evaluation and the report/CLI: the downstream arms (real, baselines, real+synthetic, ...),
the feature-level experiment (Mehra et al.), the utility benchmark (generators x arms x seeds) and the demo.
"""
