import pytest
import torch

import svigraph as sg

# The tests use tiny tensors: threads buy nothing, and a 2-thread pool stalls badly whenever
# another process holds a core (as on a busy CI machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_state():
    """Every test starts with an empty param store and a fixed seed."""
    sg.clear_param_store()
    sg.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
    sg.clear_param_store()


@pytest.fixture
def store():
    """The global param store, emptied before and after the test."""
    store = sg.get_param_store()
    store.clear()
    yield store
    store.clear()
