"""Suite-wide settings: one torch thread unless ``OMP_NUM_THREADS`` asks for more.

Tiny tensors gain nothing from intra-op threads, so the default is one.  Setting
``OMP_NUM_THREADS=2`` or ``4`` runs the in-process tests with that many threads,
which changes the order of float reductions: tolerances must hold for any count
(see the README's "Running the tests").
"""

import os

import torch


def pytest_configure(config):
    requested = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(requested) if requested.isdigit() and int(requested) > 0 else 1)
