"""Issue 21 (and the --files-from items of issue 22) through the real command line: a mistyped folder is a
fatal one-line error, a named missing file an error row; a list with comments scores the files it names."""
from __future__ import annotations


def test_a_mistyped_folder_is_fatal_but_a_missing_file_is_an_error_row(cli, tiny_model, tmp_path):
    model = tiny_model("dae")[1]
    cli.one_line_error(cli("score", tmp_path / "no_such_folder", "--model", model, "--device", "cpu", "--quiet"),
                       "no_such_folder", "no such file or folder")
    code, out, err = cli("score", tmp_path / "missing.png", "--model", model, "--device", "cpu", "--quiet")
    assert code == 3 and "file not found" in out


def test_files_from_comments_are_not_rows(cli, tiny_model, sample_test_files, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# Monday's films\n" + "\n".join(sample_test_files[:2]) + "\n# end\n")
    code, out, err = cli("score", "--files-from", listing, "--model", tiny_model("dae")[1], "--device", "cpu",
                         "--quiet", "--out", tmp_path / "out")
    assert code == 0, err
    from cxrad.serving.streaming import read_scores
    assert read_scores(tmp_path / "out" / "scores.csv")["path"].tolist() == sample_test_files[:2]
