"""K-FAC's options in one table: class defaults (the plain algorithm), presets, help, checks.

``KFAC(...)`` defaults are :data:`PLAIN_DEFAULTS`: no damping adaptation, no
quadratic-model step, no KL clipping, inverses every 20 steps. The measured
configurations are :data:`PRESETS`, the same for the command line (the optimizer
registry's "kfac" and "kfac_adaptive") and for Python (``KFAC.from_preset``).
"""

from __future__ import annotations

from collections.abc import Mapping

from natgrad.curvature.capture import SHARING_MODES
from natgrad.curvature.kronecker import FISHER_KINDS
from natgrad.precondition.factor_inverse import INVERSE_METHODS
from natgrad.precondition.kinds import CURVATURE_KINDS, approximation_names, check_approximation

MODEL_CURVATURES = ("exact", "kronecker")
# The plain algorithm (Martens & Grosse 2015 without its refinements); lr has no default.
PLAIN_DEFAULTS: dict[str, object] = {
    "momentum": 0.0,
    "damping": 1e-3,
    "weight_decay": 0.0,
    "fisher": "mc",
    "stat_decay": 0.95,
    "stat_every": 1,
    "inv_every": 20,
    "stat_fraction": 1.0,
    "model_fraction": 1.0,
    "model_min_examples": 128,
    "model_every": 1,
    "model_curvature": "exact",
    "inverse": "cholesky",
    "adapt_damping": False,
    "adapt_step": False,
    "kl_clip": None,
    "sharing": "expand",
    "doubly_factored": "off",
    "output_blocks": "off",
    "approximation": "kronecker",
}


def doubly_factored_pays(
    out_features: int,
    in_features: int,
    shape: tuple[int, int],
    rows: int,
    inv_every: int,
) -> bool:
    """Whether ``doubly_factored="auto"`` gives a layer three factors: True when its full
    Kronecker preconditioning costs more flops per step than its forward and backward, and
    the three-factor form (Ba, Grosse & Martens 2017) costs at most half as much.

    For o = ``out_features``, d = ``in_features`` (with the bias column), the input a
    C x L map (``shape``), n = ``rows`` (examples x locations per step) and T = ``inv_every``,
    counting a decomposition of a k x k factor as k^3 flops (Cholesky and its inverse)::

        full    = 2 o d (o + d)     + (o^3 + d^3) / T          (G^-1 V A^-1; refresh)
        doubly  = 2 o d (o + C + L) + (o^3 + C^3 + L^3) / T    (mode products; refresh)
        forward + backward = 6 n o d                           (y = W a; dW and da)

    and the rule is ``full > forward + backward and 2 doubly <= full``. A map of one
    channel (C = 1) or one location gains nothing, so a flattened image keeps its full
    factor.
    """
    channels, locations = shape
    o, d = out_features, in_features
    full = 2 * o * d * (o + d) + (o**3 + d**3) / inv_every
    doubly = (
        2 * o * d * (o + channels + locations) + (o**3 + channels**3 + locations**3) / inv_every
    )
    forward_backward = 6 * rows * o * d
    return full > forward_backward and 2 * doubly <= full


OPTION_HELP: dict[str, str] = {
    "lr": "learning rate >= 0 (ignored with adapt_step)",
    "momentum": "momentum in [0, 1] (ignored with adapt_step)",
    "damping": "Tikhonov damping lambda >= 0 (initial value with adapt_damping)",
    "weight_decay": "L2 coefficient eta >= 0 (None = workload default); damps too",
    "fisher": "curvature statistics: " + " | ".join(FISHER_KINDS),
    "stat_decay": "EMA decay of the Kronecker factors in [0, 1)",
    "stat_every": "steps between statistics updates (int >= 1)",
    "inv_every": "steps between inverses (int >= 1)",
    "stat_fraction": "fraction of the batch for statistics in (0, 1]",
    "model_fraction": "fraction of the batch for the quadratic model in (0, 1]",
    "model_min_examples": "at least this many examples for the quadratic model",
    "model_every": "steps between the quadratic model's Fisher products (int >= 1); "
    "between them alpha and mu are reused",
    "model_curvature": "the quadratic model's Fisher products: exact (forward-mode GGN "
    "products on its examples) | kronecker (each layer's Kronecker factors, no pass; "
    "diverges on fmnist_vit, for comparison only)",
    "inverse": "inverse method: " + " | ".join(INVERSE_METHODS),
    "adapt_damping": "Levenberg-Marquardt damping every 5 steps",
    "adapt_step": "alpha and mu from the quadratic model",
    "kl_clip": "KL-clip constant C > 0, or None for no clipping",
    "sharing": "weight sharing (sequence positions, repeated calls): expand | reduce",
    "doubly_factored": "three-factor layers (Ba et al. 2017): off | auto (a channels x "
    "locations map whose full factors cost more than the layer's forward and backward) | "
    "comma-separated layer names",
    "output_blocks": "the output factor G in diagonal blocks: off | auto (a layer whose "
    "preconditioning costs more than its forward and backward) | N (blocks of at most N "
    "outputs); kronecker and doubly-factored layers",
    "approximation": "curvature approximation of each layer: " + " | ".join(approximation_names()),
}

# Statistics every 2 steps on 1/8 of the batch, inverses every 20 steps, KL-clipped
# steps with momentum (docs/RESULTS.md, "K-FAC").
_KFAC = {
    "lr": 0.1,
    "momentum": 0.9,
    "damping": 3e-3,
    "stat_every": 2,
    "inv_every": 20,
    "stat_fraction": 0.125,
    "model_fraction": 0.125,
    "kl_clip": 1e-3,
    "doubly_factored": "auto",
    "output_blocks": "auto",
}
# The full algorithm of Martens & Grosse (2015, s.6-7): alpha and mu from the quadratic
# model and Levenberg-Marquardt damping from lambda_0 = 1, with the statistics and the
# model's Fisher products on 1/8 of the batch. Inverses every 5 steps rather than 20:
# on fmnist_autoencoder that cuts the steps to a given loss by about a third early in
# training, for about 5% more time per step; lr, momentum and kl_clip are unused.
_KFAC_ADAPTIVE = {
    **_KFAC,
    "damping": 1.0,
    "inv_every": 5,
    "adapt_damping": True,
    "adapt_step": True,
    "kl_clip": None,
}
# EKFAC (George et al. 2018): the "kfac" preset's schedule with the eigenbasis scale
# re-estimated at every statistics step. Its damping adds lambda to S alone (no
# factored cross terms), so it needs more: 3e-2 was best of 1e-3..1 on digits_mlp and
# within noise of the best on fmnist_mlp (docs/RESULTS.md, "Curvature approximations").
_EKFAC = {**_KFAC, "approximation": "ekfac", "damping": 3e-2}
# Adam in the Kronecker eigenbasis (the K-FAC analogue of SOAP): momentum and
# stat_decay are its beta1 and beta2, sqrt(damping) its eps, and the step is lr times
# its update (no momentum of the step rule, no KL clipping). lr 3e-3 was best of
# 1e-3, 3e-3, 1e-2 on fmnist_mlp (1e-2 on digits_mlp), damping 1e-8 better than 1e-6
# on digits_mlp (docs/RESULTS.md, "Curvature approximations").
_KFAC_EIGEN_ADAM = {
    **_KFAC,
    "approximation": "eigen_adam",
    "lr": 3e-3,
    "momentum": 0.9,
    "stat_decay": 0.95,
    "damping": 1e-8,
    "kl_clip": None,
}
PRESETS: dict[str, dict[str, object]] = {
    "kfac": _KFAC,
    "kfac_adaptive": _KFAC_ADAPTIVE,
    "ekfac": _EKFAC,
    "kfac_eigen_adam": _KFAC_EIGEN_ADAM,
}


def preset_options(name: str) -> dict[str, object]:
    """Every option of preset ``name`` (the plain defaults where the preset is silent)."""
    if name not in PRESETS:
        raise ValueError(f"unknown K-FAC preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**PLAIN_DEFAULTS, **PRESETS[name]}


def _check_range(name: str, value, low: float, high: float, *, closed_high: bool) -> None:
    inside = low <= value <= high if closed_high else low <= value < high
    if not inside:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


def check_options(options: Mapping[str, object]) -> None:
    """ValueError naming the first option outside its allowed range."""
    for name in ("lr", "damping", "weight_decay"):
        if not options[name] >= 0.0 or options[name] == float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {options[name]!r}")
    _check_range("momentum", options["momentum"], 0.0, 1.0, closed_high=True)
    _check_range("stat_decay", options["stat_decay"], 0.0, 1.0, closed_high=False)
    for name in ("stat_fraction", "model_fraction"):
        if not 0.0 < options[name] <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {options[name]!r}")
    for name in ("stat_every", "inv_every", "model_min_examples", "model_every"):
        value = options[name]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if options["fisher"] not in FISHER_KINDS:
        raise ValueError(
            f"fisher must be one of {', '.join(FISHER_KINDS)}; got {options['fisher']!r}"
        )
    if options["model_curvature"] not in MODEL_CURVATURES:
        raise ValueError(
            f"model_curvature must be one of {', '.join(MODEL_CURVATURES)}; "
            f"got {options['model_curvature']!r}"
        )
    if options["inverse"] not in INVERSE_METHODS:
        raise ValueError(
            f"inverse must be one of {', '.join(INVERSE_METHODS)}; got {options['inverse']!r}"
        )
    kl_clip = options["kl_clip"]
    if kl_clip is not None and not (0.0 < kl_clip < float("inf")):
        raise ValueError(f"kl_clip must be None or a finite number > 0, got {kl_clip!r}")
    check_sharing(options["sharing"])
    check_doubly_factored(options["doubly_factored"])
    output_block_choice(options["output_blocks"])
    check_approximation(options["approximation"])
    if options["approximation"] == "eigen_adam":
        _check_eigen_adam(options)


def _check_eigen_adam(options: Mapping[str, object]) -> None:
    """approximation="eigen_adam" takes Adam's moments itself: momentum is its beta1 (< 1)
    and it steps with lr, not with the quadratic model."""
    if options["adapt_step"]:
        raise ValueError(
            "adapt_step must be False with approximation='eigen_adam' (it takes Adam's step "
            "with lr; momentum is its beta1)"
        )
    if not options["momentum"] < 1.0:
        raise ValueError(
            "momentum is beta1 of approximation='eigen_adam' and must be in [0, 1), "
            f"got {options['momentum']!r}"
        )


def check_doubly_factored(value) -> None:
    """ "off", "auto", layer names (a comma-separated string or a sequence), or a mapping
    from layer names to "on" or a (channels, locations) shape."""
    if isinstance(value, Mapping):
        for name, shape in value.items():
            if shape != "on" and not (isinstance(shape, (tuple, list)) and len(shape) == 2):
                raise ValueError(
                    f"doubly_factored[{name!r}] must be 'on' or (channels, locations), "
                    f"got {shape!r}"
                )
        return
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("doubly_factored must be off, auto or layer names; got ''")
        return
    if not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        raise ValueError(
            "doubly_factored must be off, auto, layer names or a mapping of layer names to "
            f"shapes; got {value!r}"
        )


def unused_options(options: Mapping[str, object]) -> list[str]:
    """One line per option that was set but has no effect with the others (none when
    every option takes effect)."""
    notes = []
    blocks_kind = CURVATURE_KINDS.lookup(options["approximation"]).BLOCKS_OUTPUTS
    if isinstance(output_block_choice(options["output_blocks"]), int) and not blocks_kind:
        notes.append(
            f"output_blocks={options['output_blocks']!r} does not apply to approximation "
            f"{options['approximation']!r}, which keeps G whole (only doubly-factored layers "
            "are blocked)"
        )
    uses_model = options["adapt_step"] or options["adapt_damping"]
    if options["model_curvature"] != "exact" and not uses_model:
        notes.append(
            f"model_curvature={options['model_curvature']!r} has no effect without "
            "adapt_step or adapt_damping (no quadratic model is taken)"
        )
    return notes


def output_block_choice(value) -> str | int:
    """ "off", "auto", or the most outputs per block (an int >= 1, or its digits as text,
    as the command line gives it); else ValueError."""
    if value in ("off", "auto"):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(
        f"output_blocks must be off, auto or the most outputs per block (an integer >= 1); "
        f"got {value!r}"
    )


def check_sharing(sharing) -> None:
    """``sharing`` is a mode or a mapping from layer names to modes."""
    modes = sharing.values() if isinstance(sharing, Mapping) else [sharing]
    for mode in modes:
        if mode not in SHARING_MODES:
            raise ValueError(f"sharing must be one of {', '.join(SHARING_MODES)}; got {mode!r}")


__all__ = [
    "PLAIN_DEFAULTS",
    "PRESETS",
    "OPTION_HELP",
    "doubly_factored_pays",
    "output_block_choice",
    "unused_options",
    "preset_options",
    "check_options",
]
