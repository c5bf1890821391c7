"""Image loading: orientation, colour modes, bit depths, broken files, content keys and output names."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from grounded.core.images import ImageLoadError, LoadedImage, load_image, load_images, unique_names


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# ---------------------------------------------------------------------- orientation and colour modes
def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    rgb = data.chelsea()  # 300 x 451, not square
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(Image.fromarray(rgb), tmp_path / "cat.jpg", exif=exif, quality=95)
    with Image.open(path) as raw:
        stored = np.asarray(raw.convert("RGB"))  # decoded pixels, orientation not applied

    image = load_image(path)

    assert stored.shape[:2] == (300, 451)
    assert image.size == (451, 300)
    np.testing.assert_array_equal(image.pixels, np.rot90(stored, k=-1))
    # clockwise: the stored bottom-left pixel ends up top-left
    np.testing.assert_array_equal(image.pixels[0, 0], stored[-1, 0])
    assert image.pixels.flags.c_contiguous


def test_cmyk_jpeg_and_tiff(tmp_path: Path) -> None:
    rgb = data.astronaut()[::4, ::4].copy()
    cmyk = Image.fromarray(rgb).convert("CMYK")
    tiff = load_image(_save(cmyk, tmp_path / "a.tif"))
    np.testing.assert_array_equal(tiff.pixels, rgb)  # lossless RGB -> CMYK -> RGB

    jpeg_path = _save(cmyk, tmp_path / "a.jpg", quality=95)
    with Image.open(jpeg_path) as raw:
        assert raw.mode == "CMYK"
    jpeg = load_image(jpeg_path)
    assert jpeg.pixels.dtype == np.uint8 and jpeg.pixels.shape == rgb.shape
    assert np.abs(jpeg.pixels.astype(int) - rgb).mean() < 6


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    camera = data.camera()[:64, :64]
    wide = camera.astype(np.uint16) * 257  # 0..255 -> 0..65535
    wide[0, :4] = [0, 32768, 65535, 257]
    path = _save(Image.fromarray(wide), tmp_path / "depth.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I;16")

    pixels = load_image(path).pixels

    assert pixels[0, 0, 0] == 0
    assert abs(int(pixels[0, 1, 0]) - 128) <= 1
    assert pixels[0, 2, 0] == 255
    assert pixels[0, 3, 0] == 1
    np.testing.assert_array_equal(pixels[1:, :, 0], camera[1:])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_rgba_png_is_composited_on_white(tmp_path: Path) -> None:
    rgb = data.coffee()[:20, :30]
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, 10:20] = 0
    alpha[:, 20:] = 128
    path = _save(Image.fromarray(np.dstack([rgb, alpha])), tmp_path / "cup.png")

    pixels = load_image(path).pixels.astype(int)

    np.testing.assert_array_equal(pixels[:, :10], rgb[:, :10])
    assert (pixels[:, 10:20] == 255).all()
    expected = (rgb[:, 20:].astype(int) * 128 + 255 * 127) / 255
    assert np.abs(pixels[:, 20:] - expected).max() <= 1


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    palette = Image.fromarray(data.chelsea()[:40, :60]).quantize(colors=16)
    plain = load_image(_save(palette, tmp_path / "p.png"))
    np.testing.assert_array_equal(plain.pixels, np.asarray(palette.convert("RGB")))

    index = np.asarray(palette)
    transparent = int(index[0, 0])
    clear = load_image(_save(palette, tmp_path / "pt.png", transparency=transparent)).pixels
    hidden = index == transparent
    assert (clear[hidden] == 255).all()
    np.testing.assert_array_equal(clear[~hidden], np.asarray(palette.convert("RGB"))[~hidden])


def test_grayscale_and_bilevel_files(tmp_path: Path) -> None:
    camera = data.camera()[:50, :70]
    gray = load_image(_save(Image.fromarray(camera), tmp_path / "camera.png"))
    assert gray.size == (50, 70) and gray.name == "camera"
    for channel in range(3):
        np.testing.assert_array_equal(gray.pixels[..., channel], camera)

    bilevel = load_image(_save(Image.fromarray(camera > 128), tmp_path / "bw.png"))
    np.testing.assert_array_equal(bilevel.pixels[..., 1], np.where(camera > 128, 255, 0))


def test_pil_image_input_in_ycbcr_and_loaded_image_passthrough() -> None:
    rgb = data.rocket()[:32, :48]
    ycbcr = Image.fromarray(rgb).convert("YCbCr")
    image = load_image(ycbcr, name="rocket")
    np.testing.assert_array_equal(image.pixels, np.asarray(ycbcr.convert("RGB")))
    assert image.name == "rocket" and image.path is None
    assert load_image(image) is image
    renamed = load_image(image, name="other")
    assert renamed.name == "other" and renamed.pixels is image.pixels


# ---------------------------------------------------------------------- numpy input
def test_numpy_inputs_of_every_supported_layout() -> None:
    rgb = data.astronaut()[:8, :10]
    gray = rgb[..., 0]
    np.testing.assert_array_equal(load_image(gray).pixels, np.dstack([gray] * 3))
    np.testing.assert_array_equal(load_image(gray[..., None]).pixels, np.dstack([gray] * 3))
    np.testing.assert_array_equal(load_image(rgb.astype(np.uint16) * 257).pixels, rgb)
    np.testing.assert_array_equal(load_image(rgb / 255.0).pixels, rgb)
    opaque = np.dstack([rgb, np.full(gray.shape, 255, np.uint8)])
    np.testing.assert_array_equal(load_image(opaque).pixels, rgb)
    flipped = load_image(rgb[:, ::-1])  # a non-contiguous view
    assert flipped.pixels.flags.c_contiguous
    np.testing.assert_array_equal(flipped.pixels, rgb[:, ::-1])


def test_numpy_input_is_copied() -> None:
    rgb = data.astronaut()[:4, :4].copy()
    image = load_image(rgb)
    rgb[0, 0] = 0
    assert image.pixels[0, 0].tolist() == data.astronaut()[0, 0].tolist()


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4,), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int32), "dtype"),
        (np.zeros((4, 4, 3), bool), "dtype"),
        (np.full((4, 4, 3), 1.5), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), r"\[0, 1\]"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_unsupported_numpy_arrays_raise_value_error(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_image(array)


# ---------------------------------------------------------------------- broken files
def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_truncated_jpeg_raises_image_load_error(tmp_path: Path) -> None:
    raw = _jpeg_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert "truncated" in str(info.value)
    assert "\n" not in str(info.value)


def test_random_bytes_raise_image_load_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(
        ImageLoadError, match=r"noise\.jpg: not an image file \(cannot identify image file\)$"
    ):
        load_image(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageLoadError) as info:
        load_image(str(missing))
    assert str(info.value) == f"{missing}: file not found"
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_zero_size_pil_image() -> None:
    with pytest.raises(ImageLoadError, match="empty image"):
        load_image(Image.new("RGB", (0, 5)))


def test_load_images_yields_errors_in_order(tmp_path: Path) -> None:
    good = _save(Image.fromarray(data.coffee()[:16, :16]), tmp_path / "coffee.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(_jpeg_bytes()[:3000])
    results = list(load_images([good, corrupt, data.rocket()[:8, :8]]))
    assert [type(r) for r in results] == [LoadedImage, ImageLoadError, LoadedImage]
    assert results[0].name == "coffee"  # type: ignore[union-attr]
    assert results[1].path == corrupt


# ---------------------------------------------------------------------- keys and names
def test_key_depends_on_pixels_only(tmp_path: Path) -> None:
    rgb = data.chelsea()[:30, :40].copy()
    from_file = load_image(_save(Image.fromarray(rgb), tmp_path / "a.png"))
    from_array = load_image(rgb, name="b")
    assert from_file.key == from_array.key
    assert len(from_file.key) == 32 and int(from_file.key, 16) >= 0

    rgb[7, 9, 1] ^= 1
    assert load_image(rgb).key != from_file.key
    # same bytes, different shape
    assert load_image(rgb.reshape(40, 30, 3)).key != load_image(rgb).key


def test_loaded_image_validates_pixels() -> None:
    with pytest.raises(ValueError, match="uint8"):
        LoadedImage(pixels=np.zeros((2, 2), np.uint8), name="x")
    with pytest.raises(ValueError, match="contiguous"):
        LoadedImage(pixels=np.zeros((2, 4, 3), np.uint8)[:, ::2], name="x")


def test_unique_names() -> None:
    assert unique_names(["a", "a", "b", "a"]) == ["a", "a_1", "b", "a_2"]
    assert unique_names(["a", "a_1", "a"]) == ["a", "a_1", "a_2"]
    assert unique_names(["a", "a", "a_1"]) == ["a", "a_2", "a_1"]
    assert unique_names(["Photo", "photo"]) == ["Photo", "photo_1"]
    assert unique_names([]) == []
    names = ["x"] * 5 + ["x_2"]
    result = unique_names(names)
    assert len(set(result)) == len(result) and result[-1] == "x_2"
