"""Suite-wide settings: tiny tensors gain nothing from intra-op threads."""

import torch


def pytest_configure(config):
    torch.set_num_threads(1)
