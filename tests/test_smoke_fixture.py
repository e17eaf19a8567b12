def test_tiny_bundle_scores_bundled_images(tiny_cae_bundle, sample_manifest):
    from cxrad.bundle import load_detector
    det = load_detector(tiny_cae_bundle)
    table = det.score(sample_manifest[sample_manifest["orig_split"] == "test"].head(6))
    assert len(table) == 6 and (table["error"] == "").all()
    assert table["score"].notna().all() and table["percentile"].between(0, 100).all()
