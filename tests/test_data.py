"""Behaviour of tipcore.federation.data: the gallery, image decoding edge cases, tensors, the digit set."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tipcore.federation import data
from tipcore.federation.data import ImageError, load_image


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no pixel data: cheap to make, a bomb to decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _assert_one_line_image_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------- gallery


def test_gallery_has_84_unique_entries_in_order():
    samples = data.gallery()
    assert len(samples) == 84
    assert len({s.id for s in samples}) == 84
    counts = {d: sum(s.dataset == d for s in samples) for d in ("cifar10", "cifar100", "mnist", "fashion_mnist", "photo")}
    assert counts == {"cifar10": 20, "cifar100": 20, "mnist": 20, "fashion_mnist": 20, "photo": 4}
    order = [s.dataset for s in samples]
    assert order == sorted(order, key=["cifar10", "cifar100", "mnist", "fashion_mnist", "photo"].index)
    assert samples[0].id == "cifar10-00" and samples[20].id == "cifar100-00"
    assert {"mnist-03", "fmnist-12", "photo-chelsea"} <= {s.id for s in samples}


@pytest.mark.parametrize("sample", data.gallery(), ids=lambda s: s.id)
def test_every_sample_loads(sample):
    assert sample.path.is_file()
    img = data.sample_image(sample.id)
    assert img.shape == (32, 32, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.1
    assert sample.source and sample.licence


def test_labels_match_file_names_and_class_names():
    for s in data.gallery():
        names = data.class_names(s.dataset, s.num_classes)
        assert 0 <= s.label < s.num_classes == len(names)
        assert s.class_name == names[s.label]
        if s.dataset != "photo":
            assert int(s.path.stem.split("_")[-1]) == s.label
    photos = {s.id: (s.label, s.class_name, s.num_classes) for s in data.gallery() if s.dataset == "photo"}
    assert photos["photo-chelsea"] == (3, "cat", 10)
    assert photos["photo-coffee"] == (28, "cup", 100)
    assert photos["photo-rocket"] == (69, "rocket", 100)


def test_class_name_tables():
    assert len(data.CIFAR10_CLASSES) == len(data.MNIST_CLASSES) == len(data.FASHION_MNIST_CLASSES) == 10
    assert len(data.CIFAR100_CLASSES) == len(set(data.CIFAR100_CLASSES)) == 100
    assert list(data.CIFAR100_CLASSES) == sorted(data.CIFAR100_CLASSES)
    c100 = data.CIFAR100_CLASSES
    assert (c100[28], c100[48], c100[69], c100[98]) == ("cup", "motorcycle", "rocket", "woman")
    assert data.class_names("photo", 10) == data.CIFAR10_CLASSES
    assert data.class_names("photo", 100) == data.CIFAR100_CLASSES
    with pytest.raises(ValueError):
        data.class_names("cifar10", 100)
    with pytest.raises(ValueError):
        data.class_names("imagenet", 1000)


def test_unknown_sample_id_is_one_line():
    with pytest.raises(ValueError) as excinfo:
        data.get_sample("nope")
    msg = _assert_one_line_image_error(excinfo)
    assert msg.startswith("unknown image id 'nope'; choose one of: cifar10-00") and "(84 in all)" in msg


# --------------------------------------------------------------------------- rejected inputs


def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match="image file not found") as excinfo:
        load_image(tmp_path / "nothing.png")
    _assert_one_line_image_error(excinfo)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="directory"):
        load_image(str(tmp_path))


def test_empty_bytes_and_empty_file(tmp_path):
    with pytest.raises(ImageError, match="image is empty"):
        load_image(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="image is empty"):
        load_image(tmp_path / "empty.png")


def test_random_bytes_and_text_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not a decodable image") as excinfo:
        load_image(noise)
    _assert_one_line_image_error(excinfo)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageError, match="not a decodable image"):
        load_image(text)


def test_truncated_image():
    png = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="not a decodable image") as excinfo:
        load_image(png[: len(png) // 2])
    _assert_one_line_image_error(excinfo)


def test_too_many_bytes(tmp_path):
    png = _encode(Image.new("RGB", (64, 64), (10, 20, 30)))
    with pytest.raises(ImageError, match="image is too large: .* MB, limit .* MB"):
        load_image(png, max_bytes=len(png) - 1)
    path = tmp_path / "a.png"
    path.write_bytes(png)
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_bytes=len(png) - 1)
    with pytest.raises(ImageError, match="too large"):
        load_image(io.BytesIO(png), max_bytes=len(png) - 1)
    assert load_image(png, max_bytes=len(png)).shape == (32, 32, 3)


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_too_small(size):
    with pytest.raises(ImageError, match="too small.*minimum 8 x 8"):
        load_image(_encode(Image.new("RGB", size)))


def test_digit_sized_image_is_allowed():
    img = load_image(_encode(Image.new("L", (28, 28), 255)))
    assert img.shape == (32, 32, 3) and np.allclose(img, 1.0)


def test_pixel_bomb_rejected_before_decoding():
    bomb = _png_header_only(20000, 20000)
    assert len(bomb) < 200
    start = time.perf_counter()
    with pytest.raises(ImageError, match="pixels") as excinfo:
        load_image(bomb)
    assert time.perf_counter() - start < 1.0  # 400 Mpx never decoded
    assert "400,000,000 pixels" in _assert_one_line_image_error(excinfo)


def test_pixel_limit_is_ours_below_pillows():
    # 48 Mpx: under Pillow's own guard, over our default limit of 40 Mpx.
    with pytest.raises(ImageError, match=r"image has 8000 x 6000 pixels .*limit 40,000,000"):
        load_image(_png_header_only(8000, 6000))
    with pytest.raises(ImageError, match="pixels"):
        load_image(_png_header_only(100, 100), max_pixels=9999)


# --------------------------------------------------------------------------- conversions


def test_sources_path_bytes_and_stream(tmp_path):
    png = _encode(Image.new("RGB", (40, 40), (255, 0, 0)))
    path = tmp_path / "red.png"
    path.write_bytes(png)
    for src in (path, str(path), png, bytearray(png), io.BytesIO(png)):
        img = load_image(src)
        assert img.dtype == np.float32 and img.shape == (32, 32, 3)
        assert np.allclose(img, [1.0, 0.0, 0.0], atol=1e-6)


def test_output_size_and_centre_crop():
    # A wide image: left third green, middle third red, right third blue; the crop keeps the middle.
    a = np.zeros((60, 180, 3), dtype=np.uint8)
    a[:, :60, 1] = a[:, 60:120, 0] = a[:, 120:, 2] = 255
    img = load_image(_encode(Image.fromarray(a)), size=16)
    assert img.shape == (16, 16, 3)
    assert np.allclose(img[:, 4:12], [1.0, 0.0, 0.0], atol=0.02)
    big = load_image(_encode(Image.fromarray(a)), size=64)  # upscaling
    assert big.shape == (64, 64, 3) and 0 <= big.min() and big.max() <= 1


def test_grayscale_l():
    a = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    img = load_image(_encode(Image.fromarray(a, mode="L")))
    assert np.allclose(img[..., 0], a / 255.0, atol=1e-6)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_bilevel_and_float_modes():
    one = Image.new("1", (32, 32), 1)
    assert np.allclose(load_image(_encode(one)), 1.0)
    f = Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32), mode="F")
    assert np.allclose(load_image(_encode(f, "TIFF")), 128 / 255, atol=1e-6)


def test_rgba_transparent_region_becomes_white():
    a = np.zeros((32, 32, 4), dtype=np.uint8)
    a[:, :16] = (0, 0, 0, 255)  # opaque black
    a[:, 16:] = (0, 0, 0, 0)  # transparent (black underneath)
    img = load_image(_encode(Image.fromarray(a, mode="RGBA")))
    assert np.allclose(img[:, :16], 0.0) and np.allclose(img[:, 16:], 1.0)
    la = Image.fromarray(a[..., [0, 3]], mode="LA")
    assert np.allclose(load_image(_encode(la))[:, 16:], 1.0)


def test_palette_image():
    rgb = Image.new("RGB", (32, 32), (0, 128, 255))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert pal.mode == "P"
    img = load_image(_encode(pal))
    assert np.allclose(img, np.array([0, 128, 255]) / 255.0, atol=1e-6)


def test_palette_with_transparency_goes_white():
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))
    img = load_image(_encode(pal, transparency=0))
    assert np.allclose(img[:, :16], [1.0, 0.0, 0.0]) and np.allclose(img[:, 16:], 1.0)


def test_16bit_grayscale_is_scaled_not_clipped():
    a = np.zeros((32, 32), dtype=np.uint16)
    a[:, :16] = 65535
    a[:, 16:] = 32768
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    png = _encode(im)
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    img = load_image(png)
    assert np.allclose(img[:, :16], 1.0)
    assert np.allclose(img[:, 16:], 0.5, atol=0.005)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    img = load_image(_encode(cmyk, "JPEG", quality=95))
    assert np.allclose(img, [1.0, 0.0, 0.0], atol=0.03)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(gif)).n_frames == 3
    img = load_image(gif)
    assert np.allclose(img, [1.0, 0.0, 0.0], atol=0.01)


def test_exif_orientation_is_applied():
    # Stored 128 wide x 64 high: left half red, right half blue. Orientation 6 = rotate 90 degrees
    # clockwise to display, giving 64 x 128 with red on top; the centre crop is then red over blue.
    a = np.zeros((64, 128, 3), dtype=np.uint8)
    a[:, :64, 0] = 255
    a[:, 64:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = _encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())
    img = load_image(jpeg)
    red, blue = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
    assert np.allclose(img[4:12, 4:28], red, atol=0.08)
    assert np.allclose(img[20:28, 4:28], blue, atol=0.08)
    plain = load_image(_encode(Image.fromarray(a), "JPEG", quality=95))  # no EXIF: red left, blue right
    assert np.allclose(plain[4:28, 4:12], red, atol=0.08)


# --------------------------------------------------------------------------- tensors


def test_to_batch_and_back():
    imgs = [data.sample_image("cifar10-00"), data.sample_image("photo-chelsea")]
    batch = data.to_batch(imgs)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    assert np.array_equal(data.to_numpy_image(batch[1]), imgs[1])
    assert np.array_equal(data.to_numpy_image(batch[:1]), imgs[0])
    back = data.to_numpy_image(torch.full((3, 4, 5), 2.0))
    assert back.shape == (4, 5, 3) and back.dtype == np.float32 and back.max() == 1.0
    with pytest.raises(ValueError):
        data.to_batch([])
    with pytest.raises(ValueError):
        data.to_batch([np.zeros((32, 32, 3)), np.zeros((16, 16, 3))])
    with pytest.raises(ValueError):
        data.to_numpy_image(torch.zeros(2, 3, 4, 4))


# --------------------------------------------------------------------------- digits


def test_load_digits_splits():
    x_tr, y_tr = data.load_digits("train")
    x_te, y_te = data.load_digits("test")
    x_all, y_all = data.load_digits("all")
    assert x_tr.shape == (4000, 3, 32, 32) and y_tr.shape == (4000,)
    assert x_te.shape == (1000, 3, 32, 32) and y_te.shape == (1000,)
    assert x_all.shape == (5000, 3, 32, 32)
    for x, y in ((x_tr, y_tr), (x_te, y_te)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(y.tolist()) == set(range(10))
        assert torch.equal(x[:, 0], x[:, 2])  # gray repeated to 3 channels
        assert x[:, :, :2].abs().sum() == 0 and x[:, :, :, 30:].abs().sum() == 0  # 2 px zero padding
    # Disjoint and together the whole set: compare images as byte strings.
    tr = {bytes(t.numpy().tobytes()) for t in (x_tr[:, 0] * 255).round().to(torch.uint8)}
    te = {bytes(t.numpy().tobytes()) for t in (x_te[:, 0] * 255).round().to(torch.uint8)}
    assert not tr & te
    assert int(torch.bincount(y_all).min()) == int(torch.bincount(y_all).max()) == 500
    with pytest.raises(ValueError):
        data.load_digits("val")


def test_load_digits_rows_builds_only_those_examples_equal_to_indexing_the_split():
    x, y = data.load_digits("train")
    rows = torch.tensor([3999, 0, 17, 17, 2500])
    xr, yr = data.load_digits("train", rows=rows)
    assert torch.equal(xr, x[rows]) and torch.equal(yr, y[rows]) and xr.is_contiguous()
    assert torch.equal(data.digit_labels("train"), y) and torch.equal(data.digit_labels("test"), data.load_digits("test")[1])
    assert data.load_digits("test", rows=[]) [0].shape == (0, 3, 32, 32)
    with pytest.raises(IndexError):
        data.load_digits("test", rows=[1000])
    with pytest.raises(ValueError):
        data.digit_labels("val")


def test_load_digits_returns_fresh_tensors():
    x, y = data.load_digits("test")
    x.zero_()
    y.fill_(7)
    x2, y2 = data.load_digits("test")
    assert x2.max() == 1.0 and len(set(y2.tolist())) == 10
