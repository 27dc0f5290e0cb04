"""`natgrad bench step|inversion` refuse options out of range in one line (exit 2) before
loading data or allocating, and a size that cannot fit in memory with the estimate."""

from __future__ import annotations

import pytest

from natgrad.bench import arguments
from natgrad.cli import main

STEP = ["bench", "step", "--device", "cpu", "--kfacs", "kfac"]
INVERSION = ["bench", "inversion", "--device", "cpu", "--in", "96", "--out", "40"]
INVERSION += ["--channels", "8"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--batches", "-10"], "--batches must be an integer >= 1, got -10"),
        (["--batches", "16", "0"], "--batches must be an integer >= 1, got 0"),
        (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be an integer >= 0, got -1"),
        (["--memory-steps", "0"], "--memory-steps must be an integer >= 1"),
    ],
)
def test_step_refuses_options_out_of_range(capsys, monkeypatch, options, message):
    import natgrad.bench.step as step

    monkeypatch.setattr(step, "fashion_batch", lambda batch: pytest.fail("data was loaded"))
    assert main([*STEP, *options]) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--damping", "-1"], "--damping must be a finite number >= 0, got -1.0"),
        (["--damping", "nan"], "--damping must be a finite number >= 0, got nan"),
        (["--damping", "inf"], "--damping must be a finite number >= 0, got inf"),
        (["--warmup", "-1"], "--warmup must be an integer >= 0, got -1"),
        (["--out", "0"], "--out must be an integer >= 1, got 0"),
    ],
)
def test_inversion_refuses_options_out_of_range(capsys, options, message):
    assert main([*INVERSION, *options]) == 2
    assert message in one_line_error(capsys)


def test_inversion_refuses_a_layer_that_cannot_fit_with_the_estimate(capsys, monkeypatch):
    monkeypatch.setattr(arguments, "free_memory_bytes", lambda device: 8 * 2**30)
    command = ["bench", "inversion", "--device", "cpu", "--channels", "1"]
    assert main([*command, "--in", "200000", "--out", "100000"]) == 2
    err = one_line_error(capsys)
    assert "needs about 1341.1 GiB, more than the 8.0 GiB free on cpu" in err


@pytest.mark.parametrize(
    ("check", "value", "allowed"),
    [
        (arguments.positive_int, 1, True),
        (arguments.positive_int, 0, False),
        (arguments.positive_int, True, False),
        (arguments.non_negative_int, 0, True),
        (arguments.finite_non_negative_float, 0.0, True),
        (arguments.finite_non_negative_float, float("nan"), False),
        (arguments.finite_positive_float, 0.0, False),
        (arguments.finite_positive_float, float("inf"), False),
    ],
)
def test_the_shared_checks(check, value, allowed):
    if allowed:
        assert check("--x", value) == value
    else:
        with pytest.raises(ValueError, match="--x must be"):
            check("--x", value)
