"""Suite-wide set-up: under pytest-xdist each worker process gets one torch thread.

`make test` runs one worker per core; torch's default of one thread per core in every
worker would oversubscribe the machine, and tiny-model kernels then spin against each
other (tens of times slower).
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
