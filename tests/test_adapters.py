"""Grounding DINO and SAM / HQ-SAM adapters on tiny random models loaded through the user's folder path."""

import pytest
import torch

import grounded.adapters.sam as sam_module
from grounded.adapters import SAM, SAMHQ, GroundingDINO
from grounded.core.detections import Detections
from grounded.core.images import load_image
from grounded.core.prompts import Prompt
from grounded.models.sources import ModelSourceError

PROMPT = "person . red car . the man's left shoe . flag"


@pytest.fixture(scope="module")
def detector(tiny_gdino):
    return GroundingDINO(model=str(tiny_gdino), box_threshold=0.0, nms_threshold=None, top_k=30, device="cpu")


def test_init_is_light_and_loading_is_lazy(tiny_gdino):
    det = GroundingDINO(model=str(tiny_gdino))
    assert det._model is None
    det.warm_up()
    assert det._model is not None and det.max_text_len == 256


def test_detections_have_real_classes_and_exact_phrases(detector, astronaut):
    image = load_image(astronaut, name="astronaut")
    (dets,) = detector.detect([image], PROMPT)
    prompt = Prompt.of(PROMPT)
    assert 0 < len(dets) <= 30
    assert dets.classes == prompt.classes
    assert dets.image_size == (512, 512)
    assert dets.class_ids.min() >= 0 and dets.class_ids.max() < 4
    for phrase, name in zip(dets.phrases, dets.class_names, strict=True):
        assert phrase and phrase in name.lower()  # a span inside its own class, never another class
    assert (dets.boxes[:, 0] >= 0).all() and (dets.boxes[:, 2] <= 512).all()
    assert (dets.scores[:-1] >= dets.scores[1:]).all()  # sorted


def test_scores_are_the_assigned_class_token_maximum(detector, astronaut):
    """Recompute one detection's score from the raw model output and the positive map."""
    image = load_image(astronaut)
    (dets,) = detector.detect([image], PROMPT)
    text = detector.encode_prompt(Prompt.of(PROMPT))[0]
    pixels = detector._processor.image_processor([image.pixels], return_tensors="pt")
    probs, _ = detector._forward(pixels, text)
    expected = torch.stack([(probs[0][:, text.pos_map[c]]).amax(-1) for c in range(4)], dim=-1)  # (Q, 4)
    best, best_class = expected.max(-1)
    order = best.argsort(descending=True, stable=True)[: len(dets)]
    assert torch.allclose(dets.scores, best[order], atol=1e-6)
    assert torch.equal(dets.class_ids, best_class[order])


def test_thresholds_top_k_and_nms(tiny_gdino, astronaut):
    image = load_image(astronaut)
    loose = GroundingDINO(model=str(tiny_gdino), box_threshold=0.0, nms_threshold=None, top_k=30).detect(
        [image], PROMPT
    )[0]
    cut = float(loose.scores[len(loose) // 2])
    strict = GroundingDINO(model=str(tiny_gdino), box_threshold=cut, nms_threshold=None, top_k=30).detect(
        [image], PROMPT
    )[0]
    assert len(strict) == int((loose.scores > cut).sum()) and (strict.scores > cut).all()
    top3 = GroundingDINO(model=str(tiny_gdino), box_threshold=0.0, nms_threshold=None, top_k=3).detect(
        [image], PROMPT
    )[0]
    assert torch.equal(top3.boxes, loose.boxes[:3])
    nms = GroundingDINO(model=str(tiny_gdino), box_threshold=0.0, nms_threshold=0.3, top_k=30).detect(
        [image], PROMPT
    )[0]
    from torchvision.ops import box_iou

    for c in nms.class_ids.unique():
        same = nms.boxes[nms.class_ids == c]
        iou = box_iou(same, same).fill_diagonal_(0)
        assert (iou <= 0.3 + 1e-6).all()
    multi = GroundingDINO(
        model=str(tiny_gdino), box_threshold=0.0, nms_threshold=None, top_k=200, multi_label=True
    ).detect([image], PROMPT)[0]
    assert len(multi) == 30 * 4  # every (query, class) pair


def test_batched_equals_unbatched(tiny_gdino, image_files):
    """Images are bucketed by preprocessed size, so batching never pads an image: same results as one by one."""
    names = ["astronaut", "chelsea", "astronaut", "coffee", "chelsea"]
    images = [load_image(image_files[n]) for n in names]
    kwargs = {"model": str(tiny_gdino), "box_threshold": 0.0, "nms_threshold": None}
    batched = GroundingDINO(batch_size=4, **kwargs).detect(images, PROMPT)
    single = [GroundingDINO(batch_size=1, **kwargs).detect([im], PROMPT)[0] for im in images]
    assert [d.image_size for d in batched] == [im.size for im in images]
    for b, s in zip(batched, single, strict=True):
        assert torch.allclose(b.boxes, s.boxes, atol=1e-3) and torch.allclose(b.scores, s.scores, atol=1e-5)
        assert b.phrases == s.phrases and torch.equal(b.class_ids, s.class_ids)
    assert not torch.allclose(batched[0].scores, batched[1].scores)  # different images, different results


def test_padded_batches_mix_sizes_in_one_pass(tiny_gdino, image_files):
    images = [load_image(image_files[n]) for n in ("astronaut", "chelsea", "coffee")]
    det = GroundingDINO(model=str(tiny_gdino), box_threshold=0.0, batch_size=3, pad_batches=True)
    det.warm_up()
    shapes = []
    original = det._model.forward
    det._model.forward = lambda *a, **k: shapes.append(tuple(k["pixel_values"].shape)) or original(*a, **k)
    out = det.detect(images, PROMPT)
    assert len(shapes) == 1 and shapes[0][0] == 3  # one forward pass for three sizes
    assert [d.image_size for d in out] == [im.size for im in images]
    alone = [GroundingDINO(model=str(tiny_gdino), box_threshold=0.0).detect([im], PROMPT)[0] for im in images]
    # the batch pads to the largest resized shape; the image that has that shape matches its own run,
    # the padded ones differ
    widest = max(range(3), key=lambda k: images[k].size[1] / images[k].size[0])
    assert shapes[0][2:] == (128, 192)
    assert torch.allclose(out[widest].boxes, alone[widest].boxes, atol=1e-3)
    assert out[widest].phrases == alone[widest].phrases
    assert not torch.allclose(out[0].scores, alone[0].scores)


def test_long_prompt_is_split_and_merged(detector, astronaut, monkeypatch):
    """With a small text limit the prompt is split; merged results equal separate runs of each part."""
    image = load_image(astronaut)
    classes = ["person", "red car", "flag", "left shoe", "sky", "hat"]
    monkeypatch.setattr(GroundingDINO, "max_text_len", property(lambda self: 12))
    detector._captions.clear()
    texts = detector.encode_prompt(Prompt.of(classes))
    assert len(texts) > 1
    assert sorted(i for t in texts for i in t.caption.class_ids) == list(range(6))
    assert all(t.input_ids.shape[1] <= 12 for t in texts)
    merged = detector.detect([image], classes)[0]
    parts = []
    for t in texts:
        part = detector.detect([image], [classes[i] for i in t.caption.class_ids])[0]
        remap = torch.tensor(t.caption.class_ids)
        parts.append(
            Detections(
                part.boxes, part.scores, remap[part.class_ids], tuple(classes), part.phrases, part.image_size
            )
        )
    expected = Detections.cat(parts).sorted_by_score()[: detector.top_k]
    assert torch.allclose(merged.scores, expected.scores) and torch.equal(
        merged.class_ids, expected.class_ids
    )
    assert merged.phrases == expected.phrases
    detector._captions.clear()


def test_prompt_over_256_tokens_runs(detector, astronaut):
    classes = [f"thing{i:03d} red car" for i in range(120)]  # ~8 tokens each: ~1000 tokens
    texts = detector.encode_prompt(Prompt.of(classes))
    assert len(texts) >= 4 and all(t.input_ids.shape[1] <= 256 for t in texts)
    (dets,) = detector.detect([load_image(astronaut)], classes)
    assert len(dets) == detector.top_k and dets.class_ids.max() < 120


def test_per_image_prompts(detector, image_files):
    images = [load_image(image_files[n]) for n in ("astronaut", "chelsea", "coffee")]
    prompts = [Prompt.of("person"), Prompt.of("cat . sky"), Prompt.of("person")]
    out = detector.run(images=images, prompt=prompts)["detections"]
    for image, prompt, det in zip(images, prompts, out, strict=True):
        expected = detector.detect([image], prompt)[0]
        assert det.classes == prompt.classes and torch.equal(det.boxes, expected.boxes)
    # a plain list of class names is one prompt for every image
    shared = detector.run(images=images[:2], prompt=["cat", "sky"])["detections"]
    assert [d.classes for d in shared] == [("cat", "sky"), ("cat", "sky")]


@pytest.mark.parametrize("hq", [False, True])
def test_sam_masks_one_decoder_call_per_image(request, hq, image_files, monkeypatch):
    folder = request.getfixturevalue("tiny_sam_hq" if hq else "tiny_sam")
    sam = SAM(model=str(folder), device="cpu")
    assert sam.is_hq == hq
    images = [load_image(image_files["coffee"]), load_image(image_files["astronaut"])]
    boxes = [
        torch.tensor([[10.0, 20.0, 200.0, 300.0], [300.0, 50.0, 590.0, 390.0]]),
        torch.tensor([[0.0, 0.0, 512.0, 512.0]]),
    ]
    dets = [
        Detections(
            b, torch.ones(len(b)), torch.zeros(len(b), dtype=torch.int64), ("x",), ("x",) * len(b), im.size
        )
        for b, im in zip(boxes, images, strict=True)
    ]
    calls = []
    original = sam._model.forward
    sam._model.forward = lambda *a, **k: calls.append(k["input_boxes"].shape) or original(*a, **k)
    shared = sam_module.decode_many  # plain SAM: the decoder that shares the image side (issue 19)
    monkeypatch.setattr(
        sam_module,
        "decode_many",
        lambda model, emb, sparse, *a, **k: (
            calls.append(sparse.shape[:2]) or shared(model, emb, sparse, *a, **k)
        ),
    )
    shared_hq = sam_module.decode_many_hq  # HQ-SAM's
    monkeypatch.setattr(
        sam_module,
        "decode_many_hq",
        lambda model, emb, inter, sparse, *a, **k: (
            calls.append(sparse.shape[:2]) or shared_hq(model, emb, inter, sparse, *a, **k)
        ),
    )
    out = sam.segment(images, dets)
    calls = [tuple(c)[:2] for c in calls]
    assert calls == [(1, 2), (1, 1)]  # one decoder call per image, all its boxes at once
    assert out[0].masks.shape == (2, 400, 600) and out[0].masks.dtype == torch.bool
    assert out[1].masks.shape == (1, 512, 512)
    assert out[0].mask_scores.shape == (2,)
    assert torch.equal(out[0].boxes, dets[0].boxes) and out[0].phrases == dets[0].phrases


def test_sam_box_scaling_matches_the_processor(tiny_sam, image_files):
    """Our box rescaling equals SamProcessor's own input_boxes normalisation."""
    sam = SAM(model=str(tiny_sam))
    sam.warm_up()
    image = load_image(image_files["coffee"])
    box = [[[10.0, 20.0, 200.0, 300.0]]]
    inputs = sam._processor(images=image.pixels, input_boxes=box, return_tensors="pt")
    (emb,) = sam.encode([image])
    sent = []
    original = sam._prompts  # what goes to the prompt encoder (transformers' path or the shared decoder)
    sam._prompts = lambda *a: sent.append(original(*a)["input_boxes"]) or original(*a)
    sam.decode(emb, torch.tensor(box[0]))
    assert torch.allclose(sent[0].float(), inputs["input_boxes"].float(), atol=1e-4)
    assert torch.allclose(emb.embedding, sam._model.get_image_embeddings(inputs["pixel_values"]), atol=1e-5)


def test_hq_token_only_changes_the_masks(tiny_sam_hq, image_files):
    image = load_image(image_files["astronaut"])
    det = Detections(
        torch.tensor([[50.0, 50.0, 400.0, 450.0]]),
        torch.ones(1),
        torch.zeros(1, dtype=torch.int64),
        ("x",),
        ("x",),
        image.size,
    )
    both = SAM(model=str(tiny_sam_hq)).segment([image], [det])[0]
    hq = SAM(model=str(tiny_sam_hq), hq_token_only=True).segment([image], [det])[0]
    assert not torch.equal(both.masks, hq.masks)


def test_zero_detections_skip_the_segmenter(tiny_sam, image_files):
    sam = SAM(model=str(tiny_sam))
    image = load_image(image_files["chelsea"])
    out = sam.segment([image], [Detections.empty(image.size, ("cat",))])[0]
    assert len(out) == 0 and out.masks.shape == (0, 300, 451)


def test_segmenter_rejects_a_detector_folder_and_sam_hq_rejects_plain_sam(tiny_gdino, tiny_sam):
    with pytest.raises(ModelSourceError, match="the sam adapter takes sam or sam_hq"):
        SAM(model=str(tiny_gdino)).warm_up()
    with pytest.raises(ModelSourceError, match="plain SAM"):
        SAMHQ(model=str(tiny_sam)).warm_up()


def test_bad_precision_fails_when_built_not_at_first_use(tiny_gdino):
    from grounded.runtime.device import DeviceError

    with pytest.raises(ValueError, match="precision must be one of"):
        GroundingDINO(model=str(tiny_gdino), precision="fp8")
    with pytest.raises(DeviceError, match="fp16 is for GPUs"):
        GroundingDINO(model=str(tiny_gdino), precision="fp16", device="cpu").warm_up()


def test_missing_folder_and_offline_hub_give_one_clear_line(monkeypatch, tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        GroundingDINO(model=str(tmp_path / "nope" / "x")).warm_up()
    with pytest.raises(ModelSourceError, match="no config.json"):
        GroundingDINO(model=str(tmp_path)).warm_up()
    with pytest.raises(ModelSourceError, match="checkpoint file"):
        SAM(model="sam_vit_b_01ec64.pth").warm_up()
    import huggingface_hub.constants

    import grounded.models.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(
        grounded.models.hub, "in_cache", lambda repo_id: False
    )  # whatever this machine cached
    with pytest.raises(ModelSourceError) as err:
        GroundingDINO(model="IDEA-Research/grounding-dino-tiny").warm_up()
    message = str(err.value)
    assert (
        "not in the local Hugging Face cache" in message
        and "hf download IDEA-Research/grounding-dino-tiny" in message
    )
    assert "\n" not in message


def test_masks_upsampled_in_slices_equal_one_pass(tiny_sam, image_files, monkeypatch):
    import grounded.adapters.sam as sam_module

    image = load_image(image_files["coffee"])
    boxes = torch.tensor([[10.0, 20.0, 200.0, 300.0], [300.0, 50.0, 590.0, 390.0], [0.0, 0.0, 600.0, 400.0]])
    det = Detections(boxes, torch.ones(3), torch.zeros(3, dtype=torch.int64), ("x",), ("x",) * 3, image.size)
    one_pass = SAM(model=str(tiny_sam)).segment([image], [det])[0]
    monkeypatch.setattr(sam_module, "_UPSAMPLE_BYTES", 1)  # one mask at a time
    sliced = SAM(model=str(tiny_sam)).segment([image], [det])[0]
    assert torch.equal(one_pass.masks, sliced.masks) and one_pass.masks.any()


def test_image_embeddings_are_cached_by_content(tiny_sam, image_files):
    from grounded.core.images import LoadedImage

    sam = SAM(model=str(tiny_sam), cache_size=2)
    sam.warm_up()
    encoded = []
    original = sam._model.get_image_embeddings
    sam._model.get_image_embeddings = lambda pv: encoded.append(pv.shape[0]) or original(pv)
    coffee = load_image(image_files["coffee"])
    same_pixels = LoadedImage(coffee.pixels.copy(), name="renamed")
    changed = coffee.pixels.copy()
    changed[0, 0, 0] ^= 1  # one pixel differs: must never hit the cached embedding
    other = LoadedImage(changed, name="coffee")
    first = sam.encode([coffee])[0]
    again = sam.encode([same_pixels])[0]
    assert encoded == [1] and again is first  # new name, same content: cached
    fresh = sam.encode([other])[0]
    assert encoded == [1, 1] and fresh is not first
    sam.encode([load_image(image_files["chelsea"])])  # cache_size 2: coffee (least recent) is evicted
    sam.encode([coffee])
    assert encoded == [1, 1, 1, 1]
    uncached = SAM(model=str(tiny_sam), cache_size=0)
    uncached.encode([coffee])
    assert len(uncached._cache) == 0
