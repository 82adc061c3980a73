"""Brian2 simulation of exported BioFlexNet models (never imports torch).

Modules, in the order data flows through them:

* ``core.export_format`` (shared, torch-free): reads and validates the export file.
* :mod:`sim.analog`: the first layer's pathways from the image (direct encoding).
* :mod:`sim.connectivity`: synapse index arrays (conv, max-pool windows, channel map).
* :mod:`sim.biophysics`: the discrete -> physical LIF mapping.
* :mod:`sim.dynamics`: the Brian2 code of the ``exact`` and ``biophysical`` modes.
* :mod:`sim.network`: ``build_network(export, images, timing) -> Network``.
* :mod:`sim.devices`: runtime / cpp_standalone / cuda_standalone sessions.
* :mod:`sim.simulate`: the entry point, ``simulate(export, options)``.
* :mod:`sim.results`: fidelity figures and the ``sim.nc`` Dataset.
* :mod:`sim.summary`: the fidelity and convergence tables of a reproduction (variant x seed).

The ``bioflexnet sim`` command is in :mod:`bioflexnet.sim_cli`.

Nothing is imported here, so ``import sim`` does not load Brian2.
"""
