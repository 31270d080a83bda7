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

# VKERNELS_TEST_FULL=1 (`make test-full`) runs the full matrices: every combination that a `ci_cover` marker would
# thin out, and the full hypothesis example counts (_common.examples).
FULL = os.environ.get("VKERNELS_TEST_FULL", "0") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "large: allocates tensors past 2**31 elements (several GB)")
    # Both thin out only the Triton interpreter's cases (impl "triton" on CPU tensors, 100-400x slower than the
    # kernels), outside VKERNELS_TEST_FULL=1; the cases they leave out run under `make test-full`.
    config.addinivalue_line(
        "markers",
        "ci_cover(*names): of the interpreter's cases, run only enough to take every value of each named parameter"
        " (\"a,b\": every (a, b) pair) at least once per combination of the other parameters",
    )
    config.addinivalue_line("markers", "full_only(where): the interpreter's cases with where(params) true")


def _interpreted(params):
    return params.get("impl") == "triton" and params.get("device", "cpu") == "cpu" and not torch.cuda.is_available()


def _ci_dropped(items):
    """The items that full_only and ci_cover markers leave out of a CI run. ci_cover: per test function and
    combination of the unnamed parameters, a greedy cover of every (named parameter, value) pair, picking in
    collection order among the cases that add the most."""
    dropped, groups = set(), {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", None)
        if params is None or not _interpreted(params):
            continue
        only = item.get_closest_marker("full_only")
        if only is not None and only.args[0](params):
            dropped.add(id(item))
            continue
        mark = item.get_closest_marker("ci_cover")
        if mark is None:
            continue
        names = [n.split(",") for n in mark.args or tuple(params)]  # "a,b": the pair (a, b) as one value
        missing = [k for n in names for k in n if k not in params]
        assert not missing, f"{item.nodeid}: ci_cover names {missing}, not parameters of the test"
        named = {k for n in names for k in n}
        rest = tuple((k, repr(v)) for k, v in sorted(params.items()) if k not in named)
        pairs = {(tuple(n), repr([params[k] for k in n])) for n in names}
        groups.setdefault((item.module.__name__, item.originalname, rest), []).append((item, pairs))
    for cases in groups.values():
        kept = set()
        todo = set().union(*(p for _, p in cases))
        while todo:
            best = max(cases, key=lambda c: len(c[1] & todo))  # max keeps the first of equals: collection order
            kept.add(id(best[0]))
            todo -= best[1]
        dropped |= {id(item) for item, _ in cases if id(item) not in kept}
    return dropped


def pytest_collection_modifyitems(config, items):
    if not FULL:
        dropped = _ci_dropped(items)
        if dropped:
            config.hook.pytest_deselected(items=[i for i in items if id(i) in dropped])
            items[:] = [i for i in items if id(i) not in dropped]
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


# Optional per-test timing: VKERNELS_TEST_TIMES=<path> appends "seconds<TAB>nodeid" per finished test (setup + call
# + teardown) to <path> as the run goes, and prints the per-file totals and shares at the end (`make test-times`).
_TIMES_PATH = os.environ.get("VKERNELS_TEST_TIMES")
_times = {}


def pytest_sessionstart(session):
    if _TIMES_PATH:
        open(_TIMES_PATH, "w").close()


def pytest_runtest_logreport(report):
    if not _TIMES_PATH:
        return
    _times[report.nodeid] = _times.get(report.nodeid, 0.0) + report.duration
    if report.when == "teardown":
        with open(_TIMES_PATH, "a") as f:
            f.write(f"{_times[report.nodeid]:.3f}\t{report.nodeid}\n")


def pytest_terminal_summary(terminalreporter):
    if not _TIMES_PATH or not _times:
        return
    per_file = {}
    for nodeid, sec in _times.items():
        path = nodeid.split("::")[0]
        n, s = per_file.get(path, (0, 0.0))
        per_file[path] = (n + 1, s + sec)
    total = sum(s for _, s in per_file.values())
    tr = terminalreporter
    tr.write_sep("=", f"time per test file ({total:.0f} s in tests; per-test times in {_TIMES_PATH})")
    for path, (n, s) in sorted(per_file.items(), key=lambda kv: -kv[1][1]):
        tr.write_line(f"{s:8.1f} s {100 * s / total:5.1f}% {n:5d} tests  {path}")
