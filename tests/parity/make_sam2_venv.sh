#!/usr/bin/env bash
# Build the separate venv the SAM 2 parity test runs the official code in (facebookresearch/sam2, PyPI sam2 1.1.0).
#
# sam2 ships as an sdist with an optional CUDA extension (connected components for fill_hole_area): it is not
# built (SAM2_BUILD_CUDA=0), so the official video predictor skips that post-processing step, as it does on
# any install without the extension. Built --no-build-isolation against the venv's torch.
#
# Usage: tests/parity/make_sam2_venv.sh [VENV_DIR]   (default: .parity-sam2-venv in the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.parity-sam2-venv}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
pip=("$venv/bin/pip" install --quiet)
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" numpy pillow tqdm setuptools wheel
"${pip[@]}" "hydra-core>=1.3.2" "iopath>=0.1.10"
SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=1 "${pip[@]}" --no-build-isolation --no-deps "sam2==1.1.0"
"$venv/bin/python" -c "import sam2.build_sam, sam2.sam2_video_predictor; print('sam2 ok')"
