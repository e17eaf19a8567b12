"""Fixtures of the command-line tests: small manifests over the bundled images and one tiny trained model."""
from __future__ import annotations

import pandas as pd
import pytest

from cxrad.frontends.cli import main
from cxrad.frontends.cli.common import EXIT_FATAL, EXIT_OK

TINY = ["--image-size", "32", "--epochs", "1", "--device", "cpu"]


class Runner:
    """``cli(*argv)`` -> (exit code, stdout, stderr); ``one_line_error(result, *words)`` checks a fatal error."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *argv):
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    @staticmethod
    def one_line_error(result, *words):
        code, _, err = result
        assert code == EXIT_FATAL, err
        lines = [line for line in err.strip().splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("cxrad: error:")]
        # one error line, last (notes such as "removed 2 duplicates" may come before it), no traceback
        assert len(errors) == 1 and lines[-1] == errors[0], err
        assert "Traceback" not in err
        for w in words:
            assert w.lower() in errors[0].lower(), (w, errors[0])


@pytest.fixture
def cli(capsys):
    return Runner(capsys)


@pytest.fixture(scope="session")
def manifests(tmp_path_factory, sample_manifest):
    """Small CSV manifests over the bundled images: train (normals + a few abnormal), test, abnormal-only."""
    root = tmp_path_factory.mktemp("manifests")
    cols = ["path", "label", "finding", "patient_id", "source", "orig_split"]
    train = pd.concat([sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)]
                       .head(24), sample_manifest[sample_manifest["label"] == 1].head(3)])
    test = sample_manifest[sample_manifest["orig_split"] == "test"].groupby(["source", "label"]).head(4)
    abnormal = sample_manifest[sample_manifest["label"] == 1].head(12)
    out = {}
    for name, df in (("train", train), ("test", test), ("abnormal", abnormal)):
        df[cols].to_csv(root / f"{name}.csv", index=False)
        out[name] = root / f"{name}.csv"
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, manifests):
    out = tmp_path_factory.mktemp("model") / "m"
    cache = out.parent / "cache"
    assert main(["train", "--data", str(manifests["train"]), "--detector", "cae", "--out", str(out), "--cache-dir",
                 str(cache), "--quiet", *TINY]) == EXIT_OK
    return out
