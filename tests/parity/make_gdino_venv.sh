#!/usr/bin/env bash
# Build the separate venv the Grounding DINO parity test runs the official code in.
#
# groundingdino-py (IDEA-Research/GroundingDINO on PyPI) pins old dependencies (supervision==0.6.0) and breaks
# on transformers 5 ('BertModel' object has no attribute 'get_head_mask', GroundingDINO#446), so it cannot
# share grounded's venv. Installed --no-deps with the dependencies its model and inference code really import;
# its custom CUDA op is not built (the package falls back to the PyTorch implementation, which is what we want
# on CPU anyway).
#
# Usage: tests/parity/make_gdino_venv.sh [VENV_DIR]   (default: .parity-venv in the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.parity-venv}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
pip=("$venv/bin/pip" install --quiet)
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" "transformers>=4.40,<5" numpy pillow addict yapf timm \
    termcolor pycocotools opencv-python-headless scikit-image matplotlib
"${pip[@]}" --no-deps "groundingdino-py==0.4.0" "supervision==0.6.0" "segment-anything==1.0" "segment-anything-hq==0.3"
"$venv/bin/python" -c "import groundingdino.util.inference, segment_anything, transformers; print('groundingdino ok, transformers', transformers.__version__)"
