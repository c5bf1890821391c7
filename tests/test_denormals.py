"""Subnormal floats are flushed to zero on every PyTorch CPU thread inside model calls (issue 8's trap)."""

from __future__ import annotations

import pytest
import torch
from skimage import data

from grounded.runtime.denormals import flush_denormals, flushing_denormals, set_flush_denormal_all_threads

TINY = torch.finfo(torch.float32).tiny


def _subnormals(tensor: torch.Tensor) -> int:
    return int(((tensor != 0) & (tensor.abs() < TINY)).sum())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the work below is split between two OpenMP workers
    yield
    torch.set_num_threads(before)


def _parallel_products() -> tuple[torch.Tensor, torch.Tensor]:
    """An elementwise product and a matmul big enough to be split across threads, all of whose exact
    results (1e-40, 512e-41) are subnormal."""
    elementwise = torch.full((1 << 21,), 1e-20) * 1e-20
    matmul = torch.full((512, 512), 1e-20) @ torch.full((512, 512), 1e-21)
    return elementwise, matmul


def test_flush_denormals_reaches_every_worker_thread_and_is_undone(two_threads):
    assert not flushing_denormals()
    elementwise, matmul = _parallel_products()
    assert _subnormals(elementwise) == elementwise.numel() and _subnormals(matmul) == matmul.numel()

    torch.set_flush_denormal(True)  # PyTorch's own switch sets the calling thread only
    elementwise, matmul = _parallel_products()
    torch.set_flush_denormal(False)
    assert 0 < _subnormals(elementwise) < elementwise.numel()  # the other worker's share survives

    with flush_denormals():
        assert flushing_denormals()
        elementwise, matmul = _parallel_products()
        assert _subnormals(elementwise) == 0 and _subnormals(matmul) == 0
        assert elementwise.abs().max() == 0 and matmul.abs().max() == 0
        with flush_denormals():  # nesting keeps it on
            pass
        assert _subnormals(_parallel_products()[0]) == 0
    assert not flushing_denormals()
    elementwise, matmul = _parallel_products()
    assert _subnormals(elementwise) == elementwise.numel() and _subnormals(matmul) == matmul.numel()


def test_flush_denormals_leaves_it_on_when_the_caller_had_it_on(two_threads):
    torch.set_flush_denormal(True)
    try:
        with flush_denormals():
            pass
        assert flushing_denormals()
        assert _subnormals(_parallel_products()[0]) == 0  # and now on the workers too
    finally:
        torch.set_flush_denormal(False)
        set_flush_denormal_all_threads(False)
    assert not flushing_denormals()


def test_sam_adapter_flushes_the_subnormals_of_a_padded_non_square_image(tiny_sam, two_threads, monkeypatch):
    """transformers' SAM init (vision std 1e-10) drives coffee's zero-padding tokens into the subnormal
    range; flushing them changes nothing at the scale of the embedding, and our adapter does it."""
    import contextlib

    from transformers import SamModel, SamProcessor

    import grounded.runtime.device
    from grounded.adapters import SAM
    from grounded.core.images import load_image

    coffee = data.coffee()  # 400x600: padded to a square
    model = SamModel.from_pretrained(tiny_sam).eval()
    pixels = SamProcessor.from_pretrained(tiny_sam)(images=coffee, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        plain = model.get_image_embeddings(pixels)
        with flush_denormals():
            flushed = model.get_image_embeddings(pixels)
    assert _subnormals(plain) > 0  # the trap is there in the plain transformers call
    assert _subnormals(flushed) == 0
    assert plain.abs().max() > 1e-22  # the scale the weights give, far above the flush limit
    torch.testing.assert_close(flushed, plain, rtol=0, atol=1e-30)

    segmenter = SAM(model=str(tiny_sam), device="cpu", cache_size=0)
    segmenter.warm_up()
    image = load_image(coffee, name="coffee")
    assert _subnormals(segmenter.encode([image])[0].embedding) == 0
    monkeypatch.setattr(grounded.runtime.device, "flush_denormals", contextlib.nullcontext)
    assert _subnormals(segmenter.encode([image])[0].embedding) > 0  # what the adapter would give without
