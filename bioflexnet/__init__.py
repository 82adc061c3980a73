"""The top layer of BioFlexNet: the ``bioflexnet`` command line and the reproduction pipeline.

It is the only package that imports ``training``, ``sim`` and ``analysis``
together; they import ``core`` (and ``analysis`` imports ``training``), never this package.
"""
__version__ = "0.1.0"
