"""Fixtures scikit-learn's own conftest gives its test suite, for the vendored test_mlp.py."""
import importlib.util
import os

# scikit-learn is in the test extra; without it the vendored suite is not collected at all
collect_ignore = [] if importlib.util.find_spec("sklearn") else ["test_mlp.py"]


def pytest_generate_tests(metafunc):
    # scikit-learn's global_random_seed: 42 unless SKLEARN_TESTS_GLOBAL_RANDOM_SEED says otherwise
    if "global_random_seed" in metafunc.fixturenames:
        var = os.environ.get("SKLEARN_TESTS_GLOBAL_RANDOM_SEED")
        if var is None:
            seeds = [42]
        elif var == "all":
            seeds = list(range(100))
        elif "-" in var:
            lo, hi = var.split("-")
            seeds = list(range(int(lo), int(hi) + 1))
        else:
            seeds = [int(var)]
        metafunc.parametrize("global_random_seed", seeds)
