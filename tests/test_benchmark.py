"""The benchmark itself runs (tiny models) and reports every figure it promises; not a timed test."""

from grounded.benchmark import run_benchmark


def test_benchmark_reports_stages_cache_throughput_and_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDED_BENCH_CACHE", str(tmp_path))
    times = run_benchmark(small=True, repeats=1, batch_sizes=(1, 2))
    for stage in (
        "load models",
        "detector (preprocess + forward + post)",
        "SAM image encoder",
        "end to end (detect + segment)",
        "same image, new prompt (SAM embedding cached)",
        "images/s at batch 1",
        "images/s at batch 2",
        "peak memory GiB",
    ):
        assert times[stage] > 0, stage
    assert (tmp_path / "tiny" / "grounding-dino" / "config.json").is_file()
