"""``gp.optimize``'s capture progress bar: on a terminal it counts each decoder layer traced, once for the prefill
graph and once for the decode graph; where stderr is not a terminal (logs, CI) it prints nothing."""

import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import graphprune as gp
from graphprune.testing import tiny_llava

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import graphprune as gp, graphprune.graph_cache
from graphprune.testing import tiny_llava
graphprune.graph_cache.PROGRESS_DELAY_S = 0  # show it at once: the tiny model captures in about a second
gp.optimize(tiny_llava(num_layers=3), gp.FastV(k=1, keep=0.5))
"""


def on_a_terminal(code: str) -> str:
    """What ``python -c code`` writes to its stderr, a pseudo-terminal 100 columns wide."""
    main, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", code], stderr=child, stdout=subprocess.DEVNULL, env=env)
    os.close(child)
    written = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        written += chunk
    os.close(main)
    assert process.wait(timeout=300) == 0, written.decode(errors="replace")
    return written.decode(errors="replace")


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_the_bar_counts_each_layer_of_both_graphs_on_a_terminal_only(capfd):
    states = [line.split("|")[-1] for line in on_a_terminal(SCRIPT).replace("\r", "\n").splitlines()]
    counts = [state.split()[0] for state in states if "layer" in state]
    assert counts[-1] == "6/6" and {"1/6", "3/6", "4/6"} <= set(counts)

    import graphprune.graph_cache as graph_cache  # here stderr is pytest's capture, not a terminal

    delay, graph_cache.PROGRESS_DELAY_S = graph_cache.PROGRESS_DELAY_S, 0
    try:
        gp.optimize(tiny_llava(num_layers=2), gp.FastV(k=1, keep=0.5))
    finally:
        graph_cache.PROGRESS_DELAY_S = delay
    assert "graphprune: capturing" not in capfd.readouterr().err
