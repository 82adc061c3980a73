"""The convergence table: class agreement overall and on the images the reference is confident about."""
import numpy as np
import xarray as xr

from sim.convergence import confident_agreement, convergence_dataset


def _sim(logits, reference, k):
    n = len(logits)
    return xr.Dataset(
        {"logits": (("image", "class"), logits), "reference_logits": (("image", "class"), reference),
         "class_agreement": ((), np.mean(logits.argmax(1) == reference.argmax(1))),
         "accuracy": ((), 0.5), "reference_accuracy": ((), 0.5),
         "firing_rate": (("layer",), [0.1]), "reference_firing_rate": (("layer",), [0.1])},
        coords={"layer": ["conv1"]}, attrs={"n_images": n, "ticks": k, "step_ms": 6.93, "trained_ticks": 4})


def test_flips_among_uncertain_images_leave_the_confident_agreement_at_one():
    # reference margins 4, 3, 0.2, 0.1: the two uncertain images flip at K = 16, the confident two do not
    reference = np.array([[4.0, 0.0], [3.0, 0.0], [0.2, 0.0], [0.0, 0.1]])
    flipped = np.array([[3.5, 0.0], [2.0, 0.0], [0.0, 0.3], [0.2, 0.0]])
    assert confident_agreement(flipped, reference) == 1.0
    ds = convergence_dataset({"m": {4: _sim(reference, reference, 4), 16: _sim(flipped, reference, 16)}})
    assert ds.class_agreement.sel(model="m").values.tolist() == [1.0, 0.5]
    assert ds.class_agreement_confident.sel(model="m").values.tolist() == [1.0, 1.0]
    # a flip of a confident image counts
    flipped[0] = [0.0, 1.0]
    assert confident_agreement(flipped, reference) == 0.5
