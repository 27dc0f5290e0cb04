"""The shared name registry behind optimizers, workloads and experiments."""

import pytest

from natgrad.registry import Registry


def test_add_lookup_and_errors() -> None:
    colours: Registry[int] = Registry("colour")
    assert colours.add("red", 1) == 1
    colours.add("blue", 2)
    assert colours.lookup("blue") == 2 and dict(colours) == {"red": 1, "blue": 2}
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        colours.add("red", 3)
    with pytest.raises(ValueError, match="unknown colour 'green'; valid: blue, red"):
        colours.lookup("green")
    assert colours.lookup("red") == 1  # a refused registration changes nothing
