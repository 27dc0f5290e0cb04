"""K-FAC settings that the tests comparing a step with a dense computation share."""

from __future__ import annotations

import warnings

from torch import nn

from natgrad.optim.kfac import KFAC

#: The exact Fisher of a Gaussian likelihood, from this batch alone (no moving average),
#: inverted at every step: one step is then the damped K-FAC step of the batch's factors.
EXACT_GAUSSIAN = dict(likelihood="gaussian", fisher="exact", stat_decay=0.0, inv_every=1)
#: :data:`EXACT_GAUSSIAN` with the whole step taken (lr = 1).
EXACT_ONE_STEP = dict(lr=1.0, **EXACT_GAUSSIAN)


def kfac_with_fallback(model: nn.Module, **options) -> KFAC:
    """KFAC over a model with layers it does not track (LayerNorm, BatchNorm): their
    parameters go to the first-order fallback, and the warning saying so is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return KFAC(model, **options)
