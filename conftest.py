"""Suite-wide set-up.

- Under pytest-xdist each worker process gets one torch thread. `make test` runs one worker
  per core; torch's default of one thread per core in every worker would oversubscribe the
  machine, and tiny-model kernels then spin against each other (tens of times slower).
- Backends that cannot run on this machine (no GPU: the CUDA and CuPy ones) are not
  collected at all (diff_tests/conftest.py parametrizes over the available ones); the
  report names them, with their reasons, in one line: in the header and at the end.
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def _backends_line() -> str:
    """ "backends: A, B; not collected: C, D (reason); E (reason)" (the reasons grouped)."""
    from chainrule.fast import backend as fb

    line = "backends: " + ", ".join(b.name for b in fb.available_backends())
    reasons: dict[str, list[str]] = {}
    for name, reason in fb.unavailable_backends().items():
        reasons.setdefault(reason, []).append(name)
    if reasons:
        line += "; not collected: " + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in reasons.items())
    return line


def pytest_report_header(config):
    return _backends_line()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.option.verbose < 0 or config.getoption("no_header", False):  # -q hides the header: say it here
        terminalreporter.write_line(_backends_line())
