"""natgrad: second-order optimization for PyTorch.

Exact natural gradient for small models, K-FAC for real ones, and a fair
optimizer-comparison lab.
"""

from natgrad import optim
from natgrad.curvature.likelihoods import get_likelihood
from natgrad.optim import KFAC, NaturalGradient

__version__ = "0.1.0"

__all__ = ["KFAC", "NaturalGradient", "optim", "get_likelihood", "__version__"]
