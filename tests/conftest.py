"""Shared fixtures: small real datasets and a SageMaker-style /opt/ml tree in tmp dirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from training_support import COLORS, SageMakerTree, write_color_images  # noqa: E402


@pytest.fixture
def color_data(tmp_path) -> Path:
    return write_color_images(tmp_path / "data", COLORS, {"train": 12, "valid": 4, "test": 4})


@pytest.fixture(scope="session")
def fashion_data(tmp_path_factory) -> Path:
    """Real photos: 4 Fashion-MNIST classes as JPEGs in the dogImages layout (needs Debian's
    dataset-fashion-mnist, which `make test` installs when run as root)."""
    import make_sample_data
    out = tmp_path_factory.mktemp("fashion")
    assert make_sample_data.main(["--out", str(out), "--classes", "4", "--train-per-class", "50",
                                  "--valid-per-class", "15", "--test-per-class", "15"]) == 0
    return out


@pytest.fixture
def sm_tree(tmp_path) -> SageMakerTree:
    return SageMakerTree(tmp_path / "opt_ml")
