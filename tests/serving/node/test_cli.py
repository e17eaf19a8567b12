"""`cxrad serve` as a command: the shipped settings file (deploy/cxrad-serve.yaml) is read as flags are,
tokens are made and only their hashes kept, and wrong settings stop it with one line before anything starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxrad.frontends.cli import build_parser, main
from cxrad.frontends.cli.common import load_config
from cxrad.frontends.cli.serve import config_from

ROOT = Path(__file__).resolve().parents[3]


def parse(argv):
    return load_config(build_parser(argv), argv)


def test_the_deploy_settings_file_reads_as_flags(tmp_path):
    args = parse(["serve", "--config", str(ROOT / "deploy" / "cxrad-serve.yaml"), "--state", str(tmp_path),
                  "--http-port", "9999"])
    config = config_from(args)
    assert config.host == "127.0.0.1" and config.http_port == 9999 and config.dicom_port == 11112
    assert config.allowed_aets == ("ORTHANC",) and str(config.destination) == "ORTHANC@127.0.0.1:4242"
    assert config.send_heatmap and config.state_dir == tmp_path
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'node.db'}"


def test_new_token_prints_it_once_and_keeps_its_hash(tmp_path, capsys):
    assert main(["serve", "--new-token", str(tmp_path / "tokens")]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40 and token not in (tmp_path / "tokens").read_text()
    assert oct((tmp_path / "tokens").stat().st_mode & 0o777) == "0o600"
    args = parse(["serve", "--state", str(tmp_path), "--tokens", str(tmp_path / "tokens"), "--host", "0.0.0.0",
                  "--allow-aet", "PACS"])
    from cxrad.serving.node.config import token_ok
    assert token_ok(token, config_from(args).token_hashes)


@pytest.mark.parametrize("argv, message", [
    (["serve"], "--state is required"),
    (["serve", "--state", "S", "--host", "0.0.0.0"], "needs bearer tokens"),
    (["serve", "--state", "S", "--destination", "nowhere"], "AET@HOST:PORT"),
    (["serve", "--state", "S", "--ae-title", "A\\B"], "not a valid AE title"),
    (["serve", "--state", "S", "--http-port", "0", "--dicom-port", "0"], "receive nothing"),
    (["serve", "--state", "S", "--batch-size", "0"], "at least 1"),
    (["serve", "--state", "S", "--max-upload-mb", "100000"], "reader's limit"),
    (["serve", "--state", "S", "--webhook", "ftp://x"], "http"),
])
def test_wrong_settings_stop_it_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "S").exists()
