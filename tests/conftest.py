import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on machines without a GPU; set before anything
    # imports triton (the kernel modules import it lazily).
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
