"""The dashboard's logic (no Streamlit): scoring uploaded bytes, operating points, heatmaps, the table."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cxrad.frontends.app import logic
from cxrad.frontends.heatmaps import unprep_map
from cxrad.imaging import Preprocessing, read_image
from cxrad.detectors.thresholds import operating_point

CORRUPT = b"\x89PNG\r\n\x1a\n" + b"this is not really a PNG" * 20


@pytest.fixture(scope="module")
def det(tiny_cae_bundle):
    from cxrad.detectors import load_detector
    return load_detector(tiny_cae_bundle)


@pytest.fixture(scope="module")
def real_files(shared_data):
    labels = pd.read_csv(shared_data / "all_labels.csv", dtype=str, keep_default_na=False)
    k = labels[(labels.source == "kermany224") & (labels.orig_split == "test")]
    nih = labels[labels.source == "nih_cxr14_talo"]
    picks = [k[k.label == "normal"].iloc[0], k[k.label == "abnormal"].iloc[0], nih[nih.label == "normal"].iloc[0]]
    return [shared_data / row.file for row in picks]


def _full_range_pixels(path) -> np.ndarray:
    """A real image's pixels stretched to 0..255 (cxrad.io scales DICOM to its min..max without a window)."""
    g = read_image(path)
    return np.clip((g - g.min()) / (g.max() - g.min()) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _dicom_bytes(pixels: np.ndarray) -> bytes:
    """A valid 8-bit MONOCHROME2 DICOM holding ``pixels``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CR", "MONOCHROME2", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_uploads_score_like_the_cli_and_a_bad_file_does_not_stop_the_batch(det, real_files):
    files = [(p.name, p.read_bytes()) for p in real_files]
    files.insert(1, ("broken.png", CORRUPT))
    results = logic.score_uploads(det, files)
    assert [r.name for r in results] == [name for name, _ in files]
    bad, good = results[1], [results[0], *results[2:]]
    assert "not a readable image" in bad.error and bad.score is None and bad.heatmap is None
    # Same numbers as scoring the files from disk (the `cxrad score` path).
    expected = det.score([str(p) for p in real_files])
    np.testing.assert_allclose([r.score for r in good], expected["score"], rtol=1e-5)
    np.testing.assert_allclose([r.percentile for r in good], expected["percentile"])
    for r, path in zip(good, real_files):
        h, w = read_image(path).shape
        scale = min(1.0, logic.DISPLAY_SIDE / max(h, w))
        assert r.error == "" and r.image.shape == (round(h * scale), round(w * scale))
        assert r.heatmap.shape == (*r.image.shape, 3) and r.heatmap.dtype == np.uint8
        assert r.reconstruction.shape == (det.image_size, det.image_size)
        # the overlay adds colour to a grey picture
        assert np.abs(r.heatmap[..., 0].astype(int) - r.heatmap[..., 2]).max() > 30


def test_dicom_upload_scores_as_the_image_it_holds(det, real_files):
    pixels = _full_range_pixels(real_files[2])
    dcm, ref = logic.score_uploads(det, [("scan.dcm", _dicom_bytes(pixels)), ("scan.png", _png_bytes(pixels))])
    assert dcm.error == "" and dcm.score == pytest.approx(ref.score, rel=1e-5)
    assert np.array_equal(dcm.image, ref.image) and np.array_equal(dcm.heatmap, ref.heatmap)
    # DICOM without an extension is recognised by its DICM marker
    (plain,) = logic.score_uploads(det, [("IMG0001", _dicom_bytes(pixels))])
    assert plain.error == "" and plain.score == pytest.approx(ref.score, rel=1e-5)


def test_size_cap_and_file_count_cap(det, real_files, monkeypatch):
    data = real_files[0].read_bytes()
    (fits,) = logic.score_uploads(det, [("a.jpeg", data)], max_bytes=len(data))
    assert fits.error == ""
    (big,) = logic.score_uploads(det, [("a.jpeg", data)], max_bytes=len(data) - 1)
    assert "too large" in big.error and big.score is None
    monkeypatch.setattr(logic, "MAX_FILES", 2)
    results = logic.score_uploads(det, [("a.jpeg", data)] * 3)
    assert [bool(r.error) for r in results] == [False, False, True] and "at most 2" in results[2].error


def test_operating_points(det, real_files, shared_data):
    stored = operating_point(det, "stored")
    assert stored.threshold == det.threshold_ and det.threshold_rule_ in stored.label
    with pytest.raises(ValueError, match="no 'youden' threshold stored"):
        operating_point(det, "stored", rule="youden")
    normals = det.normal_scores_
    for target in (0.5, 0.8, 0.95):
        t = operating_point(det, "specificity", target=target).threshold
        assert np.mean(normals <= t) >= target  # at least the target share of held-out normals pass
    assert operating_point(det, "specificity", target=0.5).threshold <= \
        operating_point(det, "specificity", target=0.95).threshold
    with pytest.raises(ValueError, match="known to be abnormal"):
        operating_point(det, "sensitivity", target=0.9)
    with pytest.raises(ValueError, match="between 0 and 1"):
        operating_point(det, "specificity", target=1.5)
    # sensitivity from real pneumonia images uploaded as calibration files
    labels = pd.read_csv(shared_data / "all_labels.csv", dtype=str, keep_default_na=False)
    abn = labels[(labels.source == "kermany224") & (labels.label == "abnormal") & (labels.orig_split == "train")]
    files = [(f"{i}.jpeg", (shared_data / f).read_bytes()) for i, f in enumerate(abn.file.head(10))]
    scores, bad = logic.calibration_scores(logic.score_uploads(det, files + [("bad.png", CORRUPT)]))
    assert len(scores) == 10 and [r.name for r in bad] == ["bad.png"]
    for target in (0.5, 0.9):
        op = operating_point(det, "sensitivity", target=target, abnormal_scores=scores)
        assert np.mean(scores > op.threshold) >= target and "10 abnormal" in op.label
    # verdicts follow the chosen threshold without re-scoring
    results = logic.score_uploads(det, [(p.name, p.read_bytes()) for p in real_files])
    mid = float(np.median([r.score for r in results]))
    logic.apply_threshold(results, mid)
    assert [r.verdict for r in results] == ["anomalous" if r.score > mid else "normal" for r in results]


def test_overlay_and_map_scaling():
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    assert np.array_equal(logic.overlay(grey, np.zeros(grey.shape, np.float32)), np.repeat(grey[..., None], 3, -1))
    heat = np.zeros(grey.shape, np.float32)
    heat[20:30, 20:30] = 1.0
    out = logic.overlay(grey, heat)
    assert np.array_equal(out[0, 0], [grey[0, 0]] * 3) and len(set(out[25, 25])) > 1
    with pytest.raises(ValueError, match="differ in shape"):
        logic.overlay(grey, heat[:10])
    assert not logic.normalise_map(np.full((32, 32), 3.0)).any()
    spot = np.zeros((64, 64))
    spot[10, 20] = 5.0
    scaled = logic.normalise_map(spot)  # smoothed into a blob, peak at the spot, background 0
    assert scaled[10, 20] == 1.0 and scaled[10, 21] > 0.5 and scaled[0, 0] == 0.0 and scaled[40:, 40:].max() == 0


def test_padded_map_is_cropped_back_onto_the_image():
    prep = Preprocessing(size=32, resize="pad")
    amap = np.ones((32, 32), np.float32)
    amap[8:24, :] = 0.0  # a 40x20 (w x h) image padded to 32x32 fills rows 8..23
    back = unprep_map(amap, (20, 40), prep)
    assert back.shape == (20, 40) and not back.any()
    stretched = unprep_map(amap, (20, 40), Preprocessing(size=32, resize="stretch"))
    assert stretched.shape == (20, 40) and stretched.max() == 1.0


def test_results_table_has_the_cli_schema(det, real_files, tmp_path):
    from cxrad.frontends.cli import main
    results = logic.score_uploads(det, [(real_files[0].name, real_files[0].read_bytes()), ("x.png", CORRUPT)])
    op = operating_point(det, "stored")
    table = logic.results_table(logic.apply_threshold(results, op.threshold), det.components)
    assert list(table["path"]) == [real_files[0].name, "x.png"]
    assert pd.isna(table["anomalous"].iloc[1]) and table["error"].iloc[1] and np.isnan(table["score"].iloc[1])
    back = pd.read_csv(io.StringIO(table.to_csv(index=False)))
    assert back["score"].iloc[0] == pytest.approx(results[0].score)
    bundle = det.save(tmp_path / "m")
    (tmp_path / "x.png").write_bytes(CORRUPT)
    main(["score", str(real_files[0]), str(tmp_path / "x.png"), "--model", str(bundle), "--out", str(tmp_path / "s"),
          "--quiet"])
    cli = pd.read_csv(tmp_path / "s" / "scores.csv")
    assert list(cli.columns) == list(back.columns)  # one schema: the dashboard's download and `cxrad score`
    np.testing.assert_allclose(cli["score"].iloc[0], back["score"].iloc[0], rtol=1e-6)


def test_a_model_without_map_or_reconstruction(tiny_cae_bundle, real_files):
    from cxrad.detectors.cae import CAEDetector

    class ScoreOnly(CAEDetector):  # a scoring graph with no map and no reconstruction
        def scoring_graph(self):
            graph = super().scoring_graph()
            graph.outputs = ("recon_error", "log_density", "score")
            return graph

    det = ScoreOnly.load(tiny_cae_bundle, device="cpu")
    (r,) = logic.score_uploads(det, [(real_files[0].name, real_files[0].read_bytes())])
    assert r.error == "" and np.isfinite(r.score) and r.heatmap is None and r.reconstruction is None
