"""Test setup: Triton's interpreter on machines without CUDA, the `gpu` and `slow` markers."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
RUN_SLOW_ENV = "TRITONSAGAN_RUN_SLOW"

# Must happen before anything imports triton: the interpreter is chosen at import/decoration time.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", f"slow: minutes on a CPU; runs with CUDA or {RUN_SLOW_ENV}=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason=f"slow on a CPU; set {RUN_SLOW_ENV}=1 to run")
    run_slow = os.environ.get(RUN_SLOW_ENV) == "1"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        elif "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
