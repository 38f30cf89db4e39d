import pytest
import torch

import torchext  # noqa: F401  (loads the ops)

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]

ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# Tolerances for elementwise results against torch in the same dtype (one rounding apart at most).
ELEMENTWISE_TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
}


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random data for each test, but reproducible from the test's id.
    torch.manual_seed(hash(request.node.nodeid) % (2**31))
    yield
