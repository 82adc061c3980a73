"""Analyses of trained BioFlexNet runs: robustness, sparsity and energy, loss landscapes."""
