"""Image/mask reading (8/16-bit, float, colour conversions), channel policy and PNG writers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medbalance.data.imageio import (
    MaskEncoder,
    channel_notes,
    count_notes,
    decide_channels,
    encode_masks,
    read_image,
    read_mask,
    to_channels,
    write_mask_png,
    write_png,
)
from medbalance.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _u8(h=6, w=5):
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def test_gray_8bit_png_jpeg_bmp(tmp_path):
    a = _u8()
    for ext in ("png", "bmp", "tif"):
        Image.fromarray(a).save(tmp_path / f"a.{ext}")
        im = read_image(tmp_path / f"a.{ext}")
        assert im.kind == "uint8" and im.gray and im.notes == []
        np.testing.assert_array_equal(im.array, a)
    flat = np.full((16, 16), 77, np.uint8)
    Image.fromarray(flat).save(tmp_path / "a.jpg", quality=95)
    im = read_image(tmp_path / "a.jpg")
    assert im.gray and abs(int(im.array.mean()) - 77) <= 1


def test_16bit_modes(tmp_path):
    a = (RNG.integers(0, 65536, (6, 5))).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")  # I;16
    im = read_image(tmp_path / "a.png")
    assert im.mode == "I;16" and im.kind == "uint16" and im.array.dtype == np.uint16
    np.testing.assert_array_equal(im.array, a)
    big = Image.frombytes("I;16B", (5, 6), a.astype(">u2").tobytes())
    big.save(tmp_path / "b.tif")
    im = read_image(tmp_path / "b.tif")
    assert im.mode == "I;16B" and im.array.dtype == np.uint16  # native byte order
    np.testing.assert_array_equal(im.array, a)
    # mode I: within 0..65535 -> uint16; outside -> float
    Image.fromarray(a.astype(np.int32)).save(tmp_path / "c.tif")
    im = read_image(tmp_path / "c.tif")
    assert im.mode == "I" and im.kind == "uint16" and "-> 16-bit" in im.notes[0]
    Image.fromarray(a.astype(np.int32) * 4 - 100).save(tmp_path / "d.tif")
    im = read_image(tmp_path / "d.tif")
    assert im.kind == "float" and im.array.min() == a.min() * 4 - 100


def test_float_image_and_nan(tmp_path):
    f = RNG.normal(size=(6, 5)).astype(np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    im = read_image(tmp_path / "f.tif")
    assert im.kind == "float"
    np.testing.assert_array_equal(im.array, f)
    f[2, 3] = np.nan
    Image.fromarray(f).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif: image contains 1 NaN"):
        read_image(tmp_path / "nan.tif")


def test_colour_modes(tmp_path):
    g = _u8()
    rgb = np.stack([g, 255 - g, g // 2], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    im = read_image(tmp_path / "rgb.png")
    assert not im.gray and im.array.shape == (6, 5, 3) and im.notes == []
    # RGB with identical channels is grayscale (no information lost)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "grey_rgb.png")
    im = read_image(tmp_path / "grey_rgb.png")
    assert im.gray and im.notes == ["RGB with identical channels -> grayscale"]
    np.testing.assert_array_equal(im.array, g)
    # RGBA: alpha dropped (and said so)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 10, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    im = read_image(tmp_path / "rgba.png")
    assert im.array.shape == (6, 5, 3) and "RGBA -> RGB (alpha channel dropped)" in im.notes
    np.testing.assert_array_equal(im.array, rgb)
    # LA
    Image.fromarray(np.stack([g, g], -1), mode="LA").save(tmp_path / "la.png")
    im = read_image(tmp_path / "la.png")
    assert im.gray and "alpha channel dropped" in im.notes[0]
    np.testing.assert_array_equal(im.array, g)
    # bilevel
    Image.fromarray(g > 128).convert("1").save(tmp_path / "bw.png")
    im = read_image(tmp_path / "bw.png")
    np.testing.assert_array_equal(im.array, (g > 128).astype(np.uint8) * 255)


def test_palette_grey_and_colour(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    p = Image.fromarray(idx, mode="P")
    p.putpalette([0, 0, 0, 100, 100, 100, 250, 250, 250])
    p.save(tmp_path / "pg.png")
    im = read_image(tmp_path / "pg.png")
    assert im.gray and "grey palette" in im.notes[0]
    np.testing.assert_array_equal(im.array, [[0, 100], [250, 100]])
    p = Image.fromarray(idx, mode="P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    p.save(tmp_path / "pc.png")
    im = read_image(tmp_path / "pc.png")
    assert not im.gray and "colour palette -> RGB" in im.notes[0]
    np.testing.assert_array_equal(im.array[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(im.array[1, 0], [0, 0, 255])


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: image file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"junk\.png: cannot read image: not a readable image"):
        read_image(tmp_path / "junk.png")
    Image.fromarray(_u8(64, 64)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"trunc\.png: cannot read image: corrupt or truncated"):
        read_image(tmp_path / "trunc.png")


def test_read_mask_kinds(tmp_path):
    m = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), m)
    lab = np.array([[0, 1], [2, 4]], np.uint8)
    p = Image.fromarray(lab, mode="P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), lab)  # palette indices are the labels
    Image.fromarray(np.stack([m, m, m], -1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_rgb.png"), m)
    Image.fromarray(np.stack([m, 255 - m, m], -1)).save(tmp_path / "col.png")
    with pytest.raises(DataError, match=r"col\.png: colour mask"):
        read_mask(tmp_path / "col.png")
    Image.fromarray(np.array([[0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="non-integer values"):
        read_mask(tmp_path / "f.tif")
    big = np.array([[0, 1000]], np.uint16)
    Image.fromarray(big).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), big)


def test_channel_policy_and_luma():
    from medbalance.data.imageio import LoadedImage

    g = LoadedImage(np.array([[10, 20]], np.uint8), "uint8", "L")
    c = LoadedImage(np.array([[[100, 50, 0], [0, 0, 200]]], np.uint8), "uint8", "RGB")
    assert decide_channels([g, g], "auto") == 1
    assert decide_channels([g, c], "auto") == 3
    assert decide_channels([g, c], 1) == 1
    luma = to_channels(c.array, 1)
    np.testing.assert_allclose(luma[0, 0], [0.299 * 100 + 0.587 * 50, 0.114 * 200], rtol=1e-6)
    rep = to_channels(g.array, 3)
    assert rep.shape == (3, 1, 2) and (rep == np.array([10, 20], np.float32)).all()
    assert count_notes(channel_notes([g, c, g], 3)) == ["grayscale replicated to 3 channels: 2 images"]
    assert count_notes(channel_notes([g, c], 1)) == ["RGB -> grayscale (ITU-R 601 luma 0.299R+0.587G+0.114B): 1 image"]
    with pytest.raises(ConfigError):
        decide_channels([g], 2)


def test_encode_masks():
    m1 = np.array([[0, 4], [2, 2]], np.uint8)
    m2 = np.array([[1, 0], [0, 0]], np.uint8)
    values, enc = encode_masks([m1, m2], [{0, 2, 4}, {0, 1}], None)
    assert values == [0, 1, 2, 4]
    np.testing.assert_array_equal(enc[0], [[0, 3], [2, 2]])
    np.testing.assert_array_equal(enc[1], [[1, 0], [0, 0]])
    values, enc = encode_masks([np.array([[0, 255]], np.uint8)], [{0, 255}], [0, 255])
    np.testing.assert_array_equal(enc[0], [[0, 1]])
    # declared order is kept (index = position in the declared list)
    np.testing.assert_array_equal(MaskEncoder([0, 4, 2, 1])(m1), [[0, 1], [2, 2]])
    with pytest.raises(ConfigError, match="must start with the background value 0"):
        encode_masks([m1], [{0}], [255, 0])


def test_write_png_roundtrip(tmp_path):
    a = _u8()
    p = write_png(tmp_path / "sub" / "a.png", a, bits=8)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), a)
    b = (RNG.integers(0, 65536, (6, 5))).astype(np.uint16)
    p16 = write_png(tmp_path / "b.png", b, bits=16)
    im = read_image(p16)
    assert im.kind == "uint16"
    np.testing.assert_array_equal(im.array, b)
    rgb = np.stack([a, a // 2, 255 - a], -1)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "c.png", rgb)).array, rgb)
    with pytest.raises(DataError, match="values 0..300 outside 0..255"):
        write_png(tmp_path / "bad.png", np.array([[0, 300]]), bits=8)
    with pytest.raises(DataError, match="16-bit PNG export supports grayscale only"):
        write_png(tmp_path / "bad16.png", rgb.astype(np.uint16), bits=16)
    with pytest.raises(DataError, match="non-integer"):
        write_png(tmp_path / "badf.png", np.array([[0.5]]))
    # atomic: no temp files left behind, failed writes leave nothing
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.png", "c.png", "sub"]


def test_write_mask_png(tmp_path):
    m = np.array([[0, 1, 2, 4]], np.int64)
    p = write_mask_png(tmp_path / "m.png", m)
    assert Image.open(p).mode == "L"
    np.testing.assert_array_equal(read_mask(p), m)
    m16 = np.array([[0, 1000]], np.int64)
    p = write_mask_png(tmp_path / "m16.png", m16)
    np.testing.assert_array_equal(read_mask(p), m16)
