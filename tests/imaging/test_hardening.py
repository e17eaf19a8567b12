"""cxrad.io against hostile input (issue #13): decode bombs stay within bounded memory, bad header values are
refused with a one-line reason instead of becoming a score, and nothing but ImageReadError escapes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrad import imaging as cio
from cxrad.imaging import bounds
from cxrad.errors import ImageReadError
from cxrad.imaging import decode_image, read_bytes, read_image
from fuzz import generate as G
from hostile_files import finishes, special_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom and Pillow warn about what they are fed

PROBE = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))  # a regression fails here, not the machine
import pydicom, pydicom.pixels  # imported before the baseline: their import is not the decode's cost
from cxrad.imaging import ImageReadError, read_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
try:
    g = read_image(sys.argv[1])
    out = {"shape": list(g.shape), "mean": float(g.mean()), "std": float(g.std())}
except ImageReadError as exc:
    out = {"error": str(exc)}
except MemoryError:
    out = {"error": "MemoryError"}
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
out["seconds"] = time.time() - t
print(json.dumps(out))
"""


def probe(path: Path) -> dict:
    """Decode ``path`` in a fresh process (address space capped at 2 GiB); the result and the peak memory the
    decode added (MB)."""
    env = dict(os.environ, PYTHONPATH=str(Path(cio.__file__).parents[2]), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ctx(shared_data):
    return G.Context(shared_data, seed=0, per_source=3)


def grey_u8(shared_data) -> np.ndarray:
    path = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[0]
    return np.asarray(Image.open(path).convert("L"))


# ----------------------------------------------------------------------------------------------- bombs
def test_deflated_dicom_of_100_frames_4000px_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.dcm"
    path.write_bytes(G.deflated_dicom(4000, 4000, 100))  # 3.2 GB once inflated
    assert path.stat().st_size < 5_000_000
    out = probe(path)
    assert "too much pixel data" in out.get("error", "") and "100 frames of 4000x4000" in out["error"], out
    assert out["peak_mb"] < 100 and out["seconds"] < 10, out


def test_deflated_multiframe_dicom_inflates_and_decodes_only_its_first_frame(tmp_path):
    path = tmp_path / "frames.dcm"
    path.write_bytes(G.deflated_dicom(4000, 4000, 10, value=1000))  # 320 MB inflated, 32 MB per frame
    out = probe(path)
    assert out.get("shape") == [2000, 2000], out  # decoded downscaled to MAX_DECODE_SIDE
    assert out["mean"] == pytest.approx(1000 / 4095, abs=1e-6) and out["std"] < 1e-6
    assert out["peak_mb"] < 250, out  # inflating all frames alone would be 320 MB


def test_first_frame_of_a_native_multiframe_dicom(tmp_path, shared_data):
    g = grey_u8(shared_data)[:128, :128]
    frames = np.stack([G.twelve_bit(g), 4095 - G.twelve_bit(g)])
    data = G.dicom(frames[0], frames=1)
    at = data.index(b"\xe0\x7f\x10\x00")  # rewrite with two different frames
    import struct
    pixels = frames.astype("<u2").tobytes()
    data = data[:at] + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", len(pixels)) + pixels
    data = data.replace(G.element(0x00280010, b"US", struct.pack("<H", 128)),
                        G.element(0x00280008, b"IS", b"2") + G.element(0x00280010, b"US", struct.pack("<H", 128)), 1)
    np.testing.assert_allclose(decode_image(data, ".dcm"), frames[0] / 4095, atol=1e-6)


@pytest.mark.parametrize("mode, limit_mb", [("L", 160), ("RGBA", 450), ("I;16", 330)])
def test_a_7999x8000_png_is_decoded_downscaled_in_bounded_memory(tmp_path, mode, limit_mb):
    # the native decode is unavoidable for PNG (64 MB grey, 256 MB RGBA, 128 MB 16-bit); before this fix each
    # decode also made full-size float and converted copies: 0.7 to 1.2 GB
    path = tmp_path / f"big_{mode.replace(';', '')}.png"
    value = {"L": 40, "RGBA": (40, 40, 40, 255), "I;16": 40 * 257}[mode]
    Image.new(mode, (7999, 8000), value).save(path, compress_level=1)
    out = probe(path)
    assert out.get("shape") == [2000, 1999], out
    assert out["mean"] == pytest.approx(40 / 255, abs=1e-3)
    assert out["peak_mb"] < limit_mb, out


def test_a_large_jpeg_is_downscaled_by_the_decoder(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (8000, 7999), (90, 90, 90)).save(path)
    out = probe(path)
    assert out.get("shape") == [2000, 2000], out
    assert out["mean"] == pytest.approx(90 / 255, abs=2 / 255)
    assert out["peak_mb"] < 120, out  # full size would be 256 MB (RGB) before any conversion


def test_downscaled_decode_matches_the_small_picture(shared_data, tmp_path):
    """What a large file gives is the same picture as the small one, not a crop or a different scaling."""
    g = grey_u8(shared_data)  # 512 px
    big = np.kron(g, np.ones((9, 9), np.uint8))  # 4608 px: reduced by 3 to 1536
    Image.fromarray(big).save(tmp_path / "big.png")
    out = read_image(tmp_path / "big.png")
    small = np.asarray(Image.fromarray(g).resize((1536, 1536), Image.NEAREST), np.float32) / 255
    assert out.shape == (1536, 1536)
    np.testing.assert_allclose(out, small, atol=1e-6)
    Image.fromarray((big.astype(np.uint16) * 16)).save(tmp_path / "big12.png")  # 12-bit in 16: not dimmed
    np.testing.assert_allclose(read_image(tmp_path / "big12.png"), small * 255 * 16 / 4095, atol=1e-5)


def test_deflated_header_bomb_rle_bomb_and_jpeg_size_lie_are_refused(ctx):
    for make, reason in ((G.deflate_header_bomb, "would have to be inflated"),
                         (G.rle_bomb, "RLE segment decodes to more"),
                         (G.jpeg_size_mismatch, "compressed frame is 6000x6000, header says 16x16")):
        suffix, data = make(ctx)
        t = time.time()
        with pytest.raises(ImageReadError, match=reason):
            decode_image(data, suffix)
        assert time.time() - t < 5, make.__name__


def test_a_huge_declared_dicom_is_refused(ctx):
    with pytest.raises(ImageReadError, match="image too large"):
        decode_image(G.dicom_huge_declared(ctx)[1], ".dcm")


def test_concurrent_decodes_share_one_memory_budget(monkeypatch, tmp_path):
    """Threads decoding at once reserve from one budget: never more than it holds is reserved together."""
    budget = bounds.MemoryBudget(300 * 2**20)
    seen, lock = [], threading.Lock()
    reserve = budget.reserve

    def recording(n):
        cm = reserve(n)

        class Wrap:
            def __enter__(self):
                cm.__enter__()
                with lock:
                    seen.append(budget.used)

            def __exit__(self, *exc):
                return cm.__exit__(*exc)
        return Wrap()
    monkeypatch.setattr(budget, "reserve", recording)
    monkeypatch.setattr(bounds, "DECODE_BUDGET", budget)
    Image.new("RGB", (7000, 7000), 9).save(tmp_path / "a.png", compress_level=1)  # reserves > 200 MB
    threads = [threading.Thread(target=read_image, args=(tmp_path / "a.png",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 3 and max(seen) <= budget.total and min(seen) > 150 * 2**20
    assert budget.used == 0


def test_memory_budget_waits_and_lets_an_oversized_request_run_alone():
    budget = bounds.MemoryBudget(100)
    order = []

    def hold(name, n, seconds):
        with budget.reserve(n):
            order.append((name, "in", budget.used))
            time.sleep(seconds)
        order.append((name, "out"))
    a = threading.Thread(target=hold, args=("a", 60, 0.3))
    a.start()
    time.sleep(0.05)
    b = threading.Thread(target=hold, args=("b", 500, 0))  # larger than the budget: waits until it is alone
    b.start()
    a.join(5)
    b.join(5)
    assert order == [("a", "in", 60), ("a", "out"), ("b", "in", 100), ("b", "out")]


# ---------------------------------------------------------------------------------------- bad values
def _dicom_with(shared_data, tag, vr, bad, **attrs) -> bytes:
    v = G.twelve_bit(grey_u8(shared_data)[:64, :64])
    data = G.dicom(v, **{G.KEYWORDS[tag]: G.PLACEHOLDERS[tag]}, **attrs)
    return G.patch(data, tag, vr, G.PLACEHOLDERS[tag].encode(), bad.encode())


@pytest.mark.parametrize("tag, bad, reason", [
    (0x00281053, "nan", "RescaleSlope is not a finite number"),
    (0x00281053, "inf", "RescaleSlope is not a finite number"),
    (0x00281053, "0", "RescaleSlope is 0"),
    (0x00281052, "1e400", "RescaleIntercept is not a finite number"),
    (0x00281052, "abc", "RescaleIntercept is not a number"),
    (0x00281051, "0", "WindowWidth 0 is invalid"),
    (0x00281051, "-5", "WindowWidth -5 is invalid"),
    (0x00281050, "nan", "WindowCenter is not a finite number"),
    (0x00280008, "abc", "NumberOfFrames is not a whole number"),
    (0x00280008, "0", "NumberOfFrames 0 is out of range"),
])
def test_bad_dicom_values_are_refused_with_a_reason(shared_data, tag, bad, reason):
    window = {"WindowCenter": "2048", "WindowWidth": "4000"} if tag in (0x00281050, 0x00281051) else {}
    window.pop(G.KEYWORDS[tag], None)
    data = _dicom_with(shared_data, tag, G.DICOM_BAD_VALUES[0][1] if tag != 0x00280008 else b"IS", bad, **window)
    with pytest.raises(ImageReadError, match=reason) as info:
        decode_image(data, ".dcm")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_non_finite_values_is_refused(tmp_path, shared_data, value):
    arr = grey_u8(shared_data).astype(np.float32)
    arr[10, 10] = value  # before: min/max became NaN and the image a blank one, which was scored
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        read_image(tmp_path / "f.tif")
    big = np.zeros((4100, 300), np.float32)  # the downscaled path checks too
    big[4000, 5] = value
    Image.fromarray(big, mode="F").save(tmp_path / "big.tif")
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        read_image(tmp_path / "big.tif")


def test_float_tiff_with_finite_values_is_read(tmp_path, shared_data):
    g = grey_u8(shared_data)
    Image.fromarray(g.astype(np.float32) * 3.0 - 50.0, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), (g - g.min()) / float(g.max() - g.min()), atol=1e-5)


@pytest.mark.parametrize("mode, fmt", [("LAB", "TIFF"), ("CMYK", "TIFF"), ("CMYK", "JPEG")])
def test_lab_and_cmyk_images_are_refused_clearly(shared_data, mode, fmt):
    g = Image.fromarray(grey_u8(shared_data))
    img = Image.merge("LAB", [g, Image.new("L", g.size, 128), Image.new("L", g.size, 128)]) if mode == "LAB" \
        else g.convert("CMYK")
    with pytest.raises(ImageReadError, match=f"unsupported colour mode {mode}"):
        decode_image(G.save(img, fmt), ".tif")


@pytest.mark.parametrize("fmt", ["GIF", "PPM", "ICO"])
def test_only_radiograph_formats_are_decoded(shared_data, fmt):
    """Pillow opens dozens of formats (EPS even runs Ghostscript); only PNG, JPEG, TIFF and BMP are tried."""
    data = G.save(Image.fromarray(grey_u8(shared_data)[:64, :64]), fmt)
    with pytest.raises(ImageReadError, match="not a readable image"):
        decode_image(data, ".png")


def test_palette_and_float_dicom_pixel_data_are_refused(ctx):
    import struct
    v = G.twelve_bit(ctx.grey(64))
    data = G.patch(G.dicom(v), 0x00280004, b"CS", b"MONOCHROME2", b"PALETTE COLOR")
    with pytest.raises(ImageReadError, match="PALETTE COLOR"):
        decode_image(data, ".dcm")
    data = G.dicom(v)
    at = data.index(b"\xe0\x7f\x10\x00")
    pixels = v.astype("<f4").tobytes()
    data = data[:at] + struct.pack("<HH", 0x7FE0, 0x0008) + b"OF\0\0" + struct.pack("<I", len(pixels)) + pixels
    with pytest.raises(ImageReadError, match="Float Pixel Data"):
        decode_image(data, ".dcm")


def test_valid_dicom_variants_still_decode(ctx, shared_data):
    """RLE, deflated, encapsulated JPEG, big endian, implicit VR without a preamble: the bounded reader keeps
    reading them all, as the same picture."""
    g = grey_u8(shared_data)[:96, :96]
    v = G.twelve_bit(g)
    from pydicom import uid
    expected = v / 4095.0
    for kw in ({}, {"rle": True}, {"tsyntax": uid.DeflatedExplicitVRLittleEndian}, {"big_endian": True},
               {"preamble": False}):
        np.testing.assert_allclose(decode_image(G.dicom(v, **kw), ".dcm"), expected, atol=1e-6, err_msg=str(kw))
    ctx.rng = np.random.default_rng(3)
    for _ in range(40):  # dicom_ok draws every variant (JPEG, RGB, windows, ...): all must decode
        suffix, data = G.dicom_ok(ctx)
        out = decode_image(data, suffix)
        assert out.ndim == 2 and out.min() >= 0 and out.max() <= 1


# ---------------------------------------------------------------------------- only ImageReadError escapes
def test_an_unforeseen_decoder_failure_is_an_image_read_error(monkeypatch, shared_data):
    def broken(data, keep_uint8=False):
        raise TypeError("a decoder bug\nwith a second line")
    monkeypatch.setattr(cio, "_raster_to_grey", broken)
    with pytest.raises(ImageReadError, match=r"^cannot decode the image \(TypeError: a decoder bug\)$"):
        decode_image(b"\x89PNG anything", ".png")
    monkeypatch.setattr(cio, "_dicom_to_grey", lambda data: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(ImageReadError, match="out of memory"):
        decode_image(b"x" * 200, ".dcm")


def test_dicom_library_errors_inside_the_transforms_become_reasons(shared_data):
    data = _dicom_with(shared_data, 0x00281056, b"CS", "WEIRD", WindowCenter="2048", WindowWidth="4000")
    with pytest.raises(ImageReadError, match="DICOM modality or VOI transform failed"):
        decode_image(data, ".dcm")


# ------------------------------------------------------------------------------------------ special files
@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "symlink_to_dev_zero", "directory"])
def test_only_regular_files_are_read(tmp_path, kind):
    path = tmp_path / "x.png"
    path = special_file(path, kind) or path
    if kind == "directory":
        path.mkdir()
    finished, result = finishes(read_bytes, path)
    if not finished and kind == "fifo":
        with open(path, "wb"):  # unblock the reader so that the test run can end
            pass
    assert finished, "read_bytes hung"
    assert isinstance(result, ImageReadError)
    assert ("directory" if kind == "directory" else "not a regular file") in str(result)



def test_dicom_header_damage_found_late_is_still_a_reason(shared_data):
    """pydicom converts some elements only when first used (a corrupt VR raises NotImplementedError then);
    a missing Rows or pixel data shorter than one frame are named as such."""
    import struct
    v = G.twelve_bit(grey_u8(shared_data)[:64, :64])
    data = G.dicom(v)
    bad_vr = data.replace(b"\x28\x00\x04\x00CS", b"\x28\x00\x04\x00C\xd3", 1)
    with pytest.raises(ImageReadError, match=r"^not a readable DICOM file \(NotImplementedError"):
        decode_image(bad_vr, ".dcm")
    no_rows = data.replace(G.element(0x00280010, b"US", struct.pack("<H", 64)), b"", 1)
    with pytest.raises(ImageReadError, match="DICOM header has no Rows"):
        decode_image(no_rows, ".dcm")
    at = data.index(b"\xe0\x7f\x10\x00")
    short = data[:at + 8] + struct.pack("<I", 100) + data[at + 12:]  # declares 100 bytes, one frame is 8192
    with pytest.raises(ImageReadError, match="shorter than one frame"):
        decode_image(short, ".dcm")
