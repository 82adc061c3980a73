"""The torch-free, Brian2-free bottom layer of BioFlexNet.

Everything every other package shares: the equations (:mod:`core.equations`),
the run configuration (:mod:`core.config`), the vocabulary of variants and run
directories (:mod:`core.variants`), the export file (:mod:`core.export_format`),
result files (:mod:`core.results`) and their stacking on variant x seed (:mod:`core.combine`),
input checks (:mod:`core.validate`),
run locks (:mod:`core.runlock`) and the user-error type (:mod:`core.errors`).
It imports numpy and xarray only; ``training``, ``sim`` and ``analysis`` sit on it,
and the ``bioflexnet`` package (the command line and the pipeline) on all of them.
"""
