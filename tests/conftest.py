"""Shared test fixtures: the ../shared reference folder and tiny random HF checkpoints."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))  # the top-level scripts and the ssr package, without installing


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-model runs left out of the default CI subset")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference folder {SHARED} is absent (real tokenizers, models and data live there)")
    return SHARED
