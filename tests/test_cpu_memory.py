"""Inside reuse_freed_memory, large CPU tensors reuse pages instead of faulting in fresh ones each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, ClassVar

import pytest

import grounded.runtime.memory as cpu_memory
from grounded.engine import Adapter, Pipeline

pytestmark = pytest.mark.skipif(cpu_memory._glibc() is None, reason="the C library is not glibc")

MIB_PAGES = 2**20 // 4096
SIZES = (64, 60, 56, 52, 48, 44)  # MiB, all above glibc's largest mmap threshold (32 MiB)

# Run in a fresh process: glibc serves a thread from the main (brk) arena unless contention moved it to
# another arena earlier, and other arenas map large blocks whatever mallopt says (the main thread of a
# `grounded` run is in the main arena). Each block is a little smaller than the one freed before it: a
# block of the same size may not fit in a freed one (PyTorch aligns its blocks, which asks glibc for a few
# bytes more), and small allocations may take the start of a freed block.
_PROBE = """
import json, resource, sys
import torch
from grounded.runtime.memory import reuse_freed_memory

def faults(sizes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for mib in sizes:
        tensor = torch.empty(mib * 2**20 // 4, dtype=torch.float32)
        tensor.fill_(1.0)  # touch every page
        del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

sizes = json.loads(sys.argv[1])
found = {"outside": faults(sizes)}
with reuse_freed_memory() as active:
    found["active"] = active
    faults([68])  # the heap grows once
    found["inside"] = faults(sizes)
    with reuse_freed_memory():
        pass
    found["after inner block"] = faults([42, 40, 38, 36, 34])
found["after"] = faults(sizes)
print(json.dumps(found))
"""


def _probe(env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(SIZES)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_freed_memory_is_reused_inside_the_block_only():
    found = _probe()
    assert found["active"]
    pages = sum(SIZES) * MIB_PAGES
    assert found["outside"] >= pages // 2  # a fresh mapping each time (fewer with transparent huge pages)
    assert found["inside"] <= 64 * MIB_PAGES // 16  # the pages freed before, again
    assert found["after inner block"] <= 64 * MIB_PAGES // 16  # blocks nest: the outermost one restores
    assert found["after"] >= 44 * MIB_PAGES  # the memory was given back: new blocks fault again


def test_switched_off_by_environment():
    found = _probe({"GROUNDED_REUSE_FREED_MEMORY": "0"})
    assert not found["active"]
    assert found["inside"] >= sum(SIZES) * MIB_PAGES // 2


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
