"""BioFlexNet training: models (ANN / hybrid / STBP), data, trainer and CLI.

Nothing is imported here on purpose: ``import training`` stays cheap and
free of side effects; import the submodules you need.
"""
__version__ = "0.1.0"
