"""Autouse fixture for extractor tests: one torch thread.

The CI box has 2 cores shared with other work; OpenMP threads spin-waiting on an oversubscribed
machine make tiny models 10-50x slower than single-threaded. Import `one_torch_thread` into a
test module to apply it there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
