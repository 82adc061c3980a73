"""sim/ reads only the export: importing and running it never pulls in torch (or the GPL brian2cuda)."""
import subprocess
import sys
import textwrap

import pytest
from export_helpers import random_export


@pytest.mark.brian
def test_sim_never_imports_torch(tmp_path):
    path = tmp_path / "e.npz"
    random_export(path, n_images=1)  # written here, with torch; read below in a fresh interpreter
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import sim
        for mod in pkgutil.iter_modules(sim.__path__):
            importlib.import_module("sim." + mod.name)
        from sim.results import to_dataset
        from sim.simulate import SimOptions, simulate
        from core.export_format import read_export
        export = read_export({str(path)!r})
        options = SimOptions(n_images=1)
        ds = to_dataset(simulate(export, options), export, options)
        assert float(ds.class_agreement) == 1.0
        loaded = [m for m in ("torch", "brian2cuda") if m in sys.modules]
        assert not loaded, f"sim imported {{loaded}}"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
