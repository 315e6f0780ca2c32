"""examples/ban_minimal.py, the method without the framework, runs and learns: every model and BANE ensemble
beats chance by far on the digits, and the generations differ from the teacher (each was trained anew)."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ban_minimal.py"


def test_the_minimal_example_trains_a_teacher_generations_and_their_ensembles(capsys):
    spec = importlib.util.spec_from_file_location("ban_minimal", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    errors = module.main(["--generations", "3", "--epochs", "8"])
    assert list(errors) == ["teacher", "BAN-1", "BAN-2", "BAN-3", "Ens*2", "Ens*3"]
    assert all(value < 20.0 for value in errors.values()), errors  # chance is 90%
    assert "Ens*3    validation error" in capsys.readouterr().out
    assert module.main(["--generations", "3", "--epochs", "8"]) == errors  # seeded: the same numbers again
