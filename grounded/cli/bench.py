"""``grounded bench``: time each stage with real-size random-weight models."""

from __future__ import annotations

import argparse
from typing import Any

from grounded.core.errors import EXIT_OK

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded bench``."""
    bench = subparsers.add_parser("bench", help="time each stage with real-size random-weight models")
    bench.add_argument(
        "--images",
        default="astronaut@1024,coffee",
        metavar="NAME,...",
        help="skimage.data images, NAME@SIZE resized square (default: astronaut@1024,coffee)",
    )
    bench.add_argument("--prompt", default="person . flag . helmet . face . rocket", help="text prompt")
    bench.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    bench.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="precision of the optimised path (auto: bf16 where the hardware has it natively, else fp32)",
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile the optimised path")
    bench.add_argument(
        "--small", action="store_true", help="tiny models (a smoke run of the benchmark itself)"
    )
    bench.add_argument(
        "--batch-sizes",
        default="1,2,4,8",
        metavar="N,N,...",
        help="measure images/s and peak memory at these batch sizes (empty: skip)",
    )
    bench.add_argument(
        "--video",
        action="store_true",
        help="benchmark grounded track instead: frames/s, peak memory, seconds per part (Grounding DINO + "
        "SAM 2.1 on key frames, SAM 2.1 video between them) on a synthetic video",
    )
    bench.add_argument(
        "--video-frames", type=int, default=30, help="--video: frames of the synthetic video (30)"
    )
    bench.add_argument("--device", default="auto", help="--video: auto (default), cpu, cuda, ...")
    bench.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the benchmark (it prints its own report); returns the exit code."""
    if args.video:
        from grounded.tasks.bench_video import run_video_benchmark

        run_video_benchmark(frames=args.video_frames, device=args.device, small=args.small)
        return EXIT_OK
    from grounded.tasks.bench import run_benchmark

    run_benchmark(
        images=tuple(v.strip() for v in args.images.split(",") if v.strip()),
        prompt=args.prompt,
        repeats=args.repeats,
        precision=args.precision,
        compile=args.compile,
        small=args.small,
        batch_sizes=tuple(int(v) for v in args.batch_sizes.split(",") if v.strip()),
    )
    return EXIT_OK
