"""Inside reuse_freed_memory, large CPU tensors reuse pages instead of faulting in fresh ones each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, ClassVar

import pytest

import grounded.cpu_memory as cpu_memory
from grounded.engine import Adapter, Pipeline

pytestmark = pytest.mark.skipif(cpu_memory._glibc() is None, reason="the C library is not glibc")

PAGES = 48 * 2**20 // 4096  # pages of one 48 MiB tensor (above glibc's largest mmap threshold, 32 MiB)

# Run in a fresh process: glibc serves a thread from the main (brk) arena unless contention moved it to
# another arena earlier, and other arenas map large blocks whatever mallopt says (the main thread of a
# `grounded` run is in the main arena).
_PROBE = """
import json, resource
import torch
from grounded.cpu_memory import reuse_freed_memory

def faults(count=6, mib=48):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        tensor = torch.empty(mib * 2**20 // 4, dtype=torch.float32)
        tensor.fill_(1.0)  # touch every page
        del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

found = {"outside": faults()}
with reuse_freed_memory() as active:
    found["active"] = active
    # the heap grows once; a block of the same size may not fit in a freed one (PyTorch aligns its blocks,
    # which asks glibc for a little more), a smaller one does
    faults(1, mib=64)
    found["inside"] = faults()
    with reuse_freed_memory():
        pass
    found["after inner block"] = faults()
found["after"] = faults()
print(json.dumps(found))
"""


def _probe(env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_freed_memory_is_reused_inside_the_block_only():
    found = _probe()
    assert found["active"]
    assert found["outside"] >= 6 * PAGES // 2  # a fresh mapping each time (fewer with transparent huge pages)
    assert found["inside"] <= found["outside"] // 4  # mostly the same pages again (measured: 0 or 2/3 of one)
    assert found["after inner block"] <= found["outside"] // 4  # blocks nest: the outermost one restores
    assert found["after"] >= PAGES  # the memory was given back: new blocks fault again


def test_switched_off_by_environment():
    found = _probe({"GROUNDED_REUSE_FREED_MEMORY": "0"})
    assert not found["active"]
    assert found["inside"] >= 6 * PAGES // 2


class _DepthProbe(Adapter):
    """Records how deep in reuse_freed_memory blocks its run happens."""

    outputs: ClassVar[dict[str, Any]] = {"depth": int}

    def run(self, text: str) -> dict[str, Any]:
        return {"depth": cpu_memory._depth}


def test_a_pipeline_runs_its_stages_inside_one_block():
    pipeline = Pipeline()
    pipeline.add("probe", _DepthProbe())
    pipeline.expose_input("text", ["probe.text"])
    pipeline.expose_output("depth", "probe.depth")
    assert cpu_memory._depth == 0
    assert pipeline.run(text="x") == {"depth": 1}
    assert cpu_memory._depth == 0
