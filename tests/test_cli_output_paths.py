"""Output paths the system refuses end in one line and exit 2, never a traceback: a file
given where a folder is written (``--out``), a folder where a file is (``--json``), and any
other OSError on a path the user named."""

from __future__ import annotations

import pytest

from clapkit.cli import main


def _exit(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    return exc.value.code, err


@pytest.mark.parametrize("cmd", [["eval", "RUN"], ["probe", "RECIPE"], ["run", "RECIPE"]])
def test_out_naming_a_file(tmp_path, capsys, cmd):
    target = tmp_path / "afile"
    target.write_text("mine")
    code, err = _exit([*cmd, "--out", str(target)], capsys)
    assert code == 2 and "is a file" in err and "Traceback" not in err
    assert target.read_text() == "mine"


def test_predict_json_naming_a_folder(tmp_path, capsys):
    code, err = _exit(["predict", str(tmp_path), str(tmp_path / "x.png"), "--json",
                       str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err and "Traceback" not in err


def test_other_path_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import clapkit.cli as cli

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr(cli, "get_cli", refuse)
    code, err = _exit(["runs", str(tmp_path)], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: Permission denied: {tmp_path / 'locked'} (--debug shows the traceback)"]
