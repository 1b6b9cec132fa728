"""Safe decoding on a corpus of bad and awkward images generated here (docs/architecture.md,
"Untrusted input")."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from extractor.imaging import (
    ImageRejected,
    decode_image,
    decoded_pixels,
    load_tensor,
    preprocess,
    preprocess_batch,
)
from extractor.models import make_pretrained_cfg


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header for a width x height RGB image, with one tiny IDAT: a pixel bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rejected(data: bytes, name: str, **kw: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, name, **kw)
    assert info.value.filename == name
    assert name in str(info.value)
    return info.value


# -- 1. truncated files ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_image_is_422_naming_the_file(fmt: str) -> None:
    data = encode(noise(128, 96), fmt)
    exc = rejected(data[: len(data) // 2], f"cut.{fmt.lower()}")
    assert (exc.status, exc.code) == (422, "invalid_image")


def test_truncated_jpeg_passes_verify_but_is_still_rejected() -> None:
    data = encode(noise(128, 96), "JPEG")[:-2000]
    Image.open(io.BytesIO(data)).verify()  # Pillow's verify() does not notice
    assert rejected(data, "cut.jpg").status == 422


# -- 2. pixel bombs --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size",
    [
        (20_000, 20_000),  # 400 Mpx: over 2x Pillow's limit (Pillow raises)
        (10_000, 10_000),  # 100 Mpx: between 1x and 2x Pillow's limit (Pillow only warns)
        (8_000, 8_000),  # 64 Mpx: under Pillow's limit, over ours
    ],
)
def test_small_file_declaring_a_huge_image_is_413_before_decoding(size: tuple[int, int]) -> None:
    data = png_declaring(*size)
    assert len(data) < 2_000
    start = time.perf_counter()
    exc = rejected(data, "bomb.png")
    assert (exc.status, exc.code) == (413, "image_too_large")
    assert time.perf_counter() - start < 0.5  # nothing was decoded


def test_max_pixels_is_the_callers_limit() -> None:
    data = encode(noise(64, 48), "PNG")
    assert rejected(data, "a.png", max_pixels=64 * 48 - 1).status == 413
    assert decode_image(data, "a.png", max_pixels=64 * 48).size == (64, 48)


# -- 3. bytes that are not an image ----------------------------------------------------------------
@pytest.mark.parametrize(
    "data", [b"", b"hello, I am text pretending to be a JPEG", b"<html><body>hi</body></html>"]
)
def test_non_image_bytes_with_an_image_name_are_422(data: bytes) -> None:
    exc = rejected(data, "photo.jpg")
    assert exc.status == 422


# -- 4. formats outside the allow-list -------------------------------------------------------------
FOREIGN = {
    "doc.pdf": b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n",
    "fig.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "sky.fits": b"SIMPLE  =                    T" + b" " * 50 + b"END" + b" " * 77,
    "art.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_format_outside_the_allow_list_is_415(name: str) -> None:
    exc = rejected(FOREIGN[name], name)
    assert (exc.status, exc.code) == (415, "unsupported_image_format")


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX"])
def test_format_pillow_reads_but_we_do_not_allow_is_415(fmt: str) -> None:
    exc = rejected(encode(noise(16, 16), fmt), f"x.{fmt.lower()}")
    assert (exc.status, exc.code) == (415, "unsupported_image_format")
    if fmt != "TGA":  # TGA has no magic number, so it cannot be named from its first bytes
        assert fmt in exc.reason


# -- 5. awkward modes are normalised to RGB --------------------------------------------------------
def test_cmyk_jpeg_becomes_rgb() -> None:
    img = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "c.jpg")
    assert img.mode == "RGB"
    r, g, b = img.getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15  # pure red


def test_palette_transparency_is_composited_on_white() -> None:
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    img = decode_image(encode(p, "PNG", transparency=0), "p.png")
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((3, 3)) == (255, 255, 255)  # transparent black -> white, not black


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (0, 255), (0, 0, 0)),
        ("RGBA", (0, 0, 255, 0), (255, 255, 255)),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
    ],
)
def test_alpha_is_composited_on_white(mode: str, pixel: tuple, expected: tuple) -> None:
    img = decode_image(encode(Image.new(mode, (4, 4), pixel), "PNG"), "a.png")
    assert img.mode == "RGB"
    assert all(abs(a - b) <= 1 for a, b in zip(img.getpixel((1, 1)), expected, strict=True))


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = decode_image(data, "deep.png")
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 4, 128, 255]


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise
    img = decode_image(encode(wide, "JPEG", exif=exif.tobytes(), quality=95), "phone.jpg")
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode_to_rgb_of_the_same_size(fmt: str) -> None:
    img = decode_image(encode(noise(30, 20), fmt), f"ok.{fmt.lower()}")
    assert (img.mode, img.size) == ("RGB", (30, 20))


# -- preprocessing ---------------------------------------------------------------------------------
CFG = make_pretrained_cfg(32)


def test_preprocess_normalises_with_the_checkpoints_mean_and_std() -> None:
    x = preprocess(Image.new("RGB", (50, 40), (255, 128, 0)), CFG)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    for c, v in enumerate((255, 128, 0)):
        expected = (v / 255 - CFG["mean"][c]) / CFG["std"][c]
        assert torch.allclose(x[c], torch.full((32, 32), expected), atol=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [CFG, {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}],
    ids=["checkpoint", "half"],
)
def test_preprocess_gives_normalizes_bits_for_every_8_bit_value(cfg: dict) -> None:
    """preprocess normalises in numpy; every level of every channel must give the very float32
    that `normalize` (torch) gives, so features do not move by a bit."""
    from extractor.imaging import normalize

    side = cfg["input_size"][1]
    cfg = {**cfg, "resize": side}  # no resampling: the pixels below are the network's input
    levels = np.arange(side * side) % 256
    rgb = np.stack([levels, levels[::-1], (levels * 7) % 256], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb.reshape(side, side, 3), "RGB")
    x = preprocess(img, cfg)
    unit = rgb.reshape(side, side, 3).astype(np.float32) / 255.0  # float32, as it always was
    expected = normalize(torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1))), cfg)
    assert x.is_contiguous() and x.dtype == torch.float32
    assert torch.equal(x, expected)


def test_preprocess_resizes_the_shorter_side_and_crops_the_center() -> None:
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 255, 0), (100, 0, 200, 100))  # green middle third
    x = preprocess(img, CFG)
    green = (1 - CFG["mean"][1]) / CFG["std"][1]
    assert torch.allclose(x[1], torch.full((32, 32), green), atol=1e-5)  # only the middle remains


# -- the served path: JPEGs decoded at reduced scale -------------------------------------------


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    """A 1024 px photograph (scikit-image's astronaut, mirrored into 2x2 tiles) as a JPEG."""
    skimage_data = pytest.importorskip("skimage.data")
    a = skimage_data.astronaut()
    big = np.concatenate(
        [np.concatenate([a, a[:, ::-1]], 1), np.concatenate([a[::-1], a[::-1, ::-1]], 1)], 0
    )
    return encode(Image.fromarray(big), "JPEG", quality=90)


def test_a_jpeg_decodes_at_reduced_scale_never_below_the_side_asked_for(photo_jpeg: bytes) -> None:
    assert decode_image(photo_jpeg, "big.jpg").size == (1024, 1024)
    assert decode_image(photo_jpeg, "big.jpg", min_side=224).size == (256, 256)  # 1/4
    assert decode_image(photo_jpeg, "big.jpg", min_side=300).size == (512, 512)  # 1/2, not 256
    assert decode_image(photo_jpeg, "big.jpg", min_side=600).size == (1024, 1024)
    png = encode(Image.open(io.BytesIO(photo_jpeg)), "PNG")  # other formats decode whole
    assert decode_image(png, "big.png", min_side=224).size == (1024, 1024)


def test_decoded_pixels_are_what_load_tensor_decodes_read_from_the_header(
    photo_jpeg: bytes,
) -> None:
    cfg = make_pretrained_cfg(112, crop_pct=1.0)
    served = decode_image(photo_jpeg, "big.jpg", min_side=112)  # load_tensor's decode
    assert decoded_pixels(photo_jpeg, "big.jpg", cfg) == served.width * served.height == 128 * 128
    png = encode(Image.open(io.BytesIO(photo_jpeg)), "PNG")
    assert decoded_pixels(png, "big.png", cfg) == 1024 * 1024
    with pytest.raises(ImageRejected):
        decoded_pixels(photo_jpeg, "big.jpg", cfg, max_pixels=1000)


def test_the_served_input_of_a_jpeg_stays_that_of_the_full_decode(photo_jpeg: bytes) -> None:
    """load_tensor decodes a JPEG at reduced scale; the network's input barely moves (the
    inputs are standardised: a std of about 1)."""
    cfg = make_pretrained_cfg(112, crop_pct=1.0)
    served = load_tensor(photo_jpeg, "big.jpg", cfg)
    full = preprocess(decode_image(photo_jpeg, "big.jpg"), cfg)
    assert served.shape == full.shape == (3, 112, 112)
    assert (served - full).abs().mean() < 0.06  # about 2.5 of 255 levels
    assert np.corrcoef(served.flatten(), full.flatten())[0, 1] > 0.995


def test_a_truncated_jpeg_is_still_refused_at_reduced_scale(photo_jpeg: bytes) -> None:
    cfg = make_pretrained_cfg(112, crop_pct=1.0)
    with pytest.raises(ImageRejected, match="truncated") as caught:
        load_tensor(photo_jpeg[: len(photo_jpeg) * 9 // 10], "cut.jpg", cfg)
    assert caught.value.status == 422


def test_preprocess_batch_stacks_in_order_and_names_the_bad_file() -> None:
    good = encode(noise(40, 40), "PNG")
    batch = preprocess_batch([("a.png", good), ("b.png", good)], CFG)
    assert batch.shape == (2, 3, 32, 32)
    with pytest.raises(ImageRejected, match=r"bad\.png"):
        preprocess_batch([("a.png", good), ("bad.png", b"nope")], CFG)
