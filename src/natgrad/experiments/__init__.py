"""The seed's experiments, one module each; importing this package registers them all.

To add an experiment, register it in its own module and add one import line below.
"""

# Built-in experiments (each module registers itself on import).
from natgrad.experiments import (
    batch_scaling,  # noqa: E402, F401
    ill_conditioned_quadratic,  # noqa: E402, F401, I001
    kfac_vs_sgd,  # noqa: E402, F401
    nqm,  # noqa: E402, F401
    plateau,  # noqa: E402, F401
)
from natgrad.experiments.experiment import (
    EXPERIMENTS,
    Experiment,
    get_experiment,
    register_experiment,
)

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment", "register_experiment"]
