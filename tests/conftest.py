import os

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU. This must be decided before any
# Triton kernel is defined, i.e. before vkernels' Triton modules are imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# torch.compile tests get a private inductor cache unless one is set: inductor keys its cached graphs on the graph,
# not on our extension's build, so a cache left by an older build of vkernels can replay code compiled against that
# build's fake kernels (seen: "wrong number of dimensions" from a stale bilinear_pooling graph).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vkernels-tests-inductor-")

import vkernels  # noqa: E402,F401

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "large: allocates tensors past 2**31 elements (several GB)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh but reproducible random inputs per test: the seed comes from the test id.
    torch.manual_seed(abs(hash(request.node.nodeid)) % (2**31))
