"""Issue 21, real compressed DICOM: every file of ../shared/data/dicom_chest decodes (JPEG 2000, JPEG-LS
near-lossless, JPEG baseline, uncompressed, LUT sequences) with the right orientation and contrast (a MONOCHROME1
film must not come out inverted), within the decode budget; and every file of pydicom's own test corpus whose
pixel data pydicom can decode is decoded by cxrad and scored by `cxrad score`."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cxrad.errors import ImageReadError
from cxrad.imaging import bounds, read_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CHEST = {"cr_chest_mono1_10bit.dcm": "MONOCHROME1", "cr_chest_mono1_j2k_lossy.dcm": "MONOCHROME1",
         "cr_chest_mono1_jpegls_near_lossless.dcm": "MONOCHROME1", "cr_chest_mono2_jpeg_baseline.dcm": "MONOCHROME2"}
OTHER = ("ot_modality_lut_sequence.dcm", "ot_voi_lut_sequence.dcm")
#: smallest side cxrad decodes (decode_image refuses smaller: not a radiograph)
MIN_SIDE = 8


def header(path):
    import pydicom
    return pydicom.dcmread(path, stop_before_pixels=True)


def band(grey: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    h, w = grey.shape
    return float(grey[int(rows[0] * h):int(rows[1] * h), int(cols[0] * w):int(cols[1] * w)].mean())


@pytest.mark.parametrize("name", sorted(CHEST))
def test_real_chest_dicoms_decode_upright_with_bone_white(shared_data, name):
    path = shared_data / "dicom_chest" / name
    ds = header(path)
    assert ds.PhotometricInterpretation == CHEST[name]
    grey = read_image(path)
    assert grey.shape == (ds.Rows, ds.Columns) or max(grey.shape) <= bounds.MAX_DECODE_SIDE
    assert grey.dtype == np.float32 and 0 <= grey.min() < grey.max() <= 1 and grey.std() > 0.08
    # a PA chest film, bright = dense: the lung fields (either side, mid-height) are darker than the spine and
    # mediastinum between them and than the abdomen below the diaphragm. Inverted, each comparison flips.
    left, right = band(grey, (0.3, 0.55), (0.15, 0.35)), band(grey, (0.3, 0.55), (0.65, 0.85))
    spine, abdomen = band(grey, (0.3, 0.55), (0.45, 0.55)), band(grey, (0.88, 0.98), (0.3, 0.7))
    assert max(left, right) + 0.05 < spine and max(left, right) + 0.05 < abdomen, (left, right, spine, abdomen)
    # upright, not transposed or flipped: the apices (top) are not the abdomen (bottom)
    assert band(grey, (0.02, 0.12), (0.3, 0.7)) + 0.05 < abdomen or name.endswith("baseline.dcm")


def test_the_two_encodings_of_one_film_agree(shared_data):
    """The same CR film as lossy JPEG 2000 and as near-lossless JPEG-LS: two decoders, one picture."""
    j2k = read_image(shared_data / "dicom_chest" / "cr_chest_mono1_j2k_lossy.dcm")
    jls = read_image(shared_data / "dicom_chest" / "cr_chest_mono1_jpegls_near_lossless.dcm")
    assert j2k.shape == jls.shape and np.abs(j2k - jls).mean() < 0.01
    assert np.corrcoef(j2k.ravel(), jls.ravel())[0, 1] > 0.995


@pytest.mark.parametrize("name", OTHER)
def test_lut_sequence_files_match_pydicoms_own_transform(shared_data, name):
    """Scaled by the LUT's declared depth, the picture is pydicom's modality/VOI output, not inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    path = shared_data / "dicom_chest" / name
    ds = pydicom.dcmread(path)
    reference = np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds), np.float64)
    grey = read_image(path)
    assert grey.shape == reference.shape and grey.std() > 0.05
    assert np.corrcoef(grey.ravel(), reference.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("syntax, make", [
    ("JPEG-LS", lambda f: f[:f.index(b"\xff\xf7") + 5] + (9999).to_bytes(2, "big") + f[f.index(b"\xff\xf7") + 7:]),
    ("JPEG 2000", lambda f: f[:f.index(b"\xff\x51") + 6] + (99999).to_bytes(4, "big") + f[f.index(b"\xff\x51") + 10:]),
])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(shared_data, tmp_path, syntax, make):
    """The decoders allocate what the codestream states: it must state the header's size."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames
    name = "cr_chest_mono1_jpegls_near_lossless.dcm" if syntax == "JPEG-LS" else "cr_chest_mono1_j2k_lossy.dcm"
    ds = pydicom.dcmread(shared_data / "dicom_chest" / name)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([make(frame)])
    ds.save_as(tmp_path / "x.dcm")
    with pytest.raises(ImageReadError, match="compressed frame is .*header says"):
        read_image(tmp_path / "x.dcm")


def pydicom_corpus() -> list[tuple[str, str]]:
    """(file, what pydicom makes of its pixel data): 'decodes' or the reason it cannot."""
    import pydicom
    from pydicom.data import get_testdata_files
    out = []
    for path in sorted(get_testdata_files()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
                if "PixelData" not in ds:
                    out.append((path, "no pixel data"))
                    continue
                arr = ds.pixel_array
            out.append((path, "decodes" if min(arr.shape[-3:-1] if arr.ndim > 2 and arr.shape[-1] in (3, 4)
                                                else arr.shape[-2:]) >= MIN_SIDE else "smaller than 8 px"))
        except Exception as exc:
            out.append((path, f"{type(exc).__name__}"))
    return out


def test_every_file_of_pydicoms_corpus_that_pydicom_decodes_is_decoded():
    corpus = pydicom_corpus()
    decodable = [p for p, what in corpus if what == "decodes"]
    assert len(corpus) > 150 and len(decodable) > 80
    failures = {}
    for path in decodable:
        try:
            grey = read_image(path)
            assert grey.ndim == 2 and np.isfinite(grey).all()
        except ImageReadError as exc:
            failures[path.split("/")[-1]] = str(exc)
    assert not failures, failures


def test_cxrad_score_over_the_whole_pydicom_corpus(tiny_model, tmp_path):
    """`cxrad score --files-from` over all of pydicom's test files: no traceback, every file a row, and every
    file pydicom decodes (at least 8 px a side) scored."""
    from tiny_models import run_cxrad
    corpus = pydicom_corpus()
    (tmp_path / "list.txt").write_text("\n".join(p for p, _ in corpus) + "\n")
    done = run_cxrad(["score", "--files-from", tmp_path / "list.txt", "--model", tiny_model("dae")[1], "--out",
                      tmp_path / "out", "--quiet", "--device", "cpu", "--cache-dir", tmp_path / "cache"], timeout=600)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr[-2000:]
    from cxrad.serving.streaming import read_scores
    table = read_scores(tmp_path / "out" / "scores.csv").set_index("path")
    assert len(table) == len(corpus)
    wanted = pd.Series(dict(corpus))
    unscored = table.loc[wanted[wanted == "decodes"].index]
    assert (unscored["error"] == "").all(), unscored.loc[unscored["error"] != "", "error"].to_dict()
