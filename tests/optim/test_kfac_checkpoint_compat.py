"""K-FAC state_dicts written by natgrad 0.1.0 (before K-FAC was split into parts) load and
resume exactly; a state_dict that does not fit the model fails with a clear message.

``data/kfac_state_v1.pt`` was written by the 0.1.0 optimizer: a model and optimizer
state after 3 steps, and the parameters that version reached after 3 more steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from natgrad.optim.kfac import KFAC, DampingConfig

SAVED = Path(__file__).parent / "data" / "kfac_state_v1.pt"
CONFIGS = {
    "fixed": dict(lr=0.3, momentum=0.9, damping=0.1, kl_clip=0.01, fisher="exact", inv_every=2),
    "adaptive": dict(
        lr=1.0,
        damping=0.5,
        adapt_step=True,
        adapt_damping=True,
        fisher="exact",
        inv_every=2,
        damping_config=DampingConfig(interval=2),
    ),
}


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_of_the_previous_version_resumes_like_it(name):
    saved = torch.load(SAVED, weights_only=True)
    inputs, targets = saved["inputs"], saved["targets"]
    model = _model()
    model.load_state_dict(saved[name]["model"])
    opt = KFAC(model, likelihood="gaussian", **CONFIGS[name])
    opt.model_rule.restart_momentum = False  # 0.1.0's unconstrained alpha, mu
    opt.load_state_dict(saved[name]["optimizer"])

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    for _ in range(3):
        opt.step(closure)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(after, saved[name]["after"], rtol=1e-5, atol=1e-6)
    assert opt.param_groups[0]["damping"] == pytest.approx(float(saved[name]["damping"]))


def test_state_dict_of_another_model_is_refused_naming_the_layer():
    saved = torch.load(SAVED, weights_only=True)["fixed"]["optimizer"]
    other = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = KFAC(other, lr=0.1, likelihood="gaussian")
    with pytest.raises(ValueError, match="does not fit this model: layer 0"):
        opt.load_state_dict(saved)
