"""MobileSAM and Light HQ-SAM files (TinyViT image encoder): our port inside transformers' SamModel / SamHQModel.

The official Light HQ-SAM (segment_anything_hq.build_sam.build_sam_vit_t) is built with random weights; batch
norms and attention biases, which the official init leaves at constants (zeros for the biases), are randomised
too so every tensor matters. A MobileSAM-layout file is built from the same official TinyViT with
segment-anything's standard prompt encoder and mask decoder (the ``mobile_sam`` package is the same code). Each
file is loaded through grounded's SAM adapter and compared with the official predictor on a real photo.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from skimage import data

from grounded.adapters import SAM, SAMHQ
from grounded.cli import main
from grounded.core.detections import Detections
from grounded.core.images import load_image
from grounded.models.checkpoints import CheckpointError, convert_checkpoint, detect_variant, read_state_dict
from grounded.models.tinyvit import WEIGHTS_NAME, load_tinyvit_sam

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

BOX = np.array([50.0, 40.0, 380.0, 300.0])  # on coffee (600 x 400)


@pytest.fixture(autouse=True)
def _conversion_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _keep_input_tensor(monkeypatch):
    """Record the official predictor's preprocessed input so both encoders can see the same tensor."""
    import segment_anything
    import segment_anything_hq

    for module in (segment_anything, segment_anything_hq):
        original = module.SamPredictor.set_torch_image

        def set_torch_image(self, transformed_image, original_image_size, _original=original):
            self.input_image_tensor_for_parity = self.model.preprocess(transformed_image)
            return _original(self, transformed_image, original_image_size)

        monkeypatch.setattr(module.SamPredictor, "set_torch_image", set_torch_image)


def _randomise_constants(model: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm statistics and affine terms and TinyViT's attention biases, which the official init sets to
    constants; ``eval()`` afterwards, since the official attention caches its biases when switched to eval."""
    with torch.no_grad():
        for module in model.image_encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            if hasattr(module, "attention_biases"):
                module.attention_biases.normal_(0.0, 1.0)
    return model.eval()


def _light_hq_sam(seed: int = 0):
    from segment_anything_hq.build_sam import build_sam_vit_t

    torch.manual_seed(seed)
    return _randomise_constants(build_sam_vit_t(checkpoint=None))


def _mobile_sam(seed: int = 0):
    """MobileSAM's layout: the TinyViT encoder (returning the embeddings alone) + SAM's prompt encoder and
    standard mask decoder, as in ChaoningZhang/MobileSAM's ``build_sam_vit_t``."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from segment_anything_hq.modeling import TinyViT

    class MobileTinyViT(TinyViT):
        def forward(self, x):
            return super().forward(x)[0]

    torch.manual_seed(seed)
    encoder = MobileTinyViT(
        img_size=1024,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        drop_path_rate=0.0,
        layer_lr_decay=0.8,
    )
    model = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return _randomise_constants(model)


def _parity(hq: bool, tmp_path) -> dict[str, float]:
    official = _light_hq_sam() if hq else _mobile_sam()
    path = tmp_path / ("sam_hq_vit_tiny.pth" if hq else "mobile_sam.pt")
    torch.save(official.state_dict(), path)
    assert detect_variant(read_state_dict(path)) == ("sam_hq_tinyvit" if hq else "sam_tinyvit")

    if hq:
        from segment_anything_hq import SamPredictor
    else:
        from segment_anything import SamPredictor
    image = data.coffee()
    predictor = SamPredictor(official)
    predictor.set_image(image)
    kwargs = {"hq_token_only": False} if hq else {}
    logits, their_iou, their_low = predictor.predict(
        box=BOX, multimask_output=False, return_logits=True, **kwargs
    )
    their_mask = logits[0] > 0

    sam = SAM(model=str(path), device="cpu")
    assert sam.is_hq == hq
    picture = load_image(image)
    (embedding,) = sam.encode([picture])
    with torch.no_grad():  # the same preprocessed input through both image encoders
        ours = sam._model.get_image_embeddings(predictor.input_image_tensor_for_parity)
    encoder_diff = ((ours[0] if hq else ours) - predictor.features).abs().max().item()
    if hq:  # the intermediate TinyViT features Light HQ-SAM's decoder fuses
        encoder_diff = max(encoder_diff, (ours[1][0] - predictor.interm_features[0]).abs().max().item())
    scale = torch.tensor([embedding.reshaped_size[1] / 600, embedding.reshaped_size[0] / 400] * 2)
    with torch.no_grad():  # end to end, each side with its own preprocessing
        out = sam._model(
            input_boxes=(torch.tensor(BOX, dtype=torch.float32) * scale)[None, None],
            multimask_output=False,
            **sam._decoder_inputs(embedding),
        )
    det = Detections(
        torch.tensor([BOX], dtype=torch.float32),
        torch.ones(1),
        torch.zeros(1, dtype=torch.int64),
        ("x",),
        ("x",),
        picture.size,
    )
    mask = sam.segment([picture], [det])[0].masks[0].numpy()
    diffs = {
        "encoder": encoder_diff,
        "low_res_logits": (out.pred_masks[0, 0, 0] - torch.from_numpy(their_low[0])).abs().max().item(),
        "iou": abs(out.iou_scores[0, 0, 0].item() - float(their_iou[0])),
        "mask_iou": float((mask & their_mask).sum() / max((mask | their_mask).sum(), 1)),
    }
    print(f"\n{'Light HQ-SAM' if hq else 'MobileSAM'} parity: {diffs}")
    return diffs


@pytest.mark.parametrize(
    "hq",
    [pytest.param(False, marks=pytest.mark.slow), True],  # ~10 s each on 2 CPU cores: the full 1024² encoder
    ids=["mobile_sam", "light_hq_sam"],
)
def test_parity_with_the_official_code_on_random_weights(hq, tmp_path):
    diffs = _parity(hq, tmp_path)
    assert diffs["encoder"] <= 1e-4
    assert diffs["low_res_logits"] <= 1e-4 and diffs["iou"] <= 1e-4
    assert diffs["mask_iou"] >= 0.999


def test_mobile_sam_file_loads_as_plain_sam_with_the_official_decoder(tmp_path):
    """Quick check (the end-to-end one is slow): MobileSAM's file is plain SAM with our TinyViT, its encoder
    weights load unchanged, and prompt encoder + standard mask decoder match the official ones on the same
    image embeddings (the shared TinyViT port itself is checked end to end by the Light HQ-SAM test)."""
    official = _mobile_sam(seed=2)
    path = tmp_path / "mobile_sam.pt"
    torch.save(official.state_dict(), path)
    sam = SAM(model=str(path), device="cpu")
    assert not sam.is_hq and sam._model.config.model_type == "sam"
    theirs = {k: v for k, v in official.image_encoder.state_dict().items() if "head" not in k}
    ours = sam._model.vision_encoder.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)

    torch.manual_seed(3)
    embeddings = torch.randn(1, 256, 64, 64)
    box = torch.tensor([[100.0, 80.0, 700.0, 500.0]])
    with torch.no_grad():
        sparse, dense = official.prompt_encoder(points=None, boxes=box, masks=None)
        their_low, their_iou = official.mask_decoder(
            image_embeddings=embeddings,
            image_pe=official.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        out = sam._model(image_embeddings=embeddings, input_boxes=box[None], multimask_output=False)
    assert (out.pred_masks[0, 0, 0] - their_low[0, 0]).abs().max().item() <= 1e-4
    assert abs(out.iou_scores[0, 0, 0].item() - their_iou[0, 0].item()) <= 1e-4


def test_converted_folder_and_cli(tmp_path, capsys):
    from transformers import AutoModel

    path = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(_light_hq_sam(seed=1).state_dict(), path)
    out = tmp_path / "light-hq-sam"
    assert main(["convert", str(path), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "sam_hq" and config["grounded_image_encoder"]["type"] == "tinyvit"
    assert config["grounded_image_encoder"]["embed_dims"] == [64, 128, 160, 320]
    assert config["mask_decoder_config"]["vit_dim"] == 160
    assert (out / WEIGHTS_NAME).is_file() and not (out / "model.safetensors").exists()
    with pytest.raises(OSError):  # plain transformers refuses it rather than building a random ViT
        AutoModel.from_pretrained(out)
    # the folder loads back with the file's weights, and through the adapters
    reloaded = load_tinyvit_sam(out)
    official = read_state_dict(path)
    for key in ("layers.2.blocks.0.attn.attention_biases", "layers.0.blocks.1.conv3.bn.running_var"):
        assert torch.equal(reloaded.vision_encoder.state_dict()[key], official[f"image_encoder.{key}"])
    assert SAMHQ(model=str(out), device="cpu").is_hq
    capsys.readouterr()


def test_a_truncated_tinyvit_file_gets_a_clear_error(tmp_path):
    state = _mobile_sam().state_dict()
    del state["image_encoder.layers.2.blocks.1.local_conv.c.weight"]
    path = tmp_path / "mobile_sam.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"MobileSAM \(TinyViT\) layout: missing"):
        convert_checkpoint(path, tmp_path / "out")
