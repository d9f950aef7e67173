"""``ioc detect`` over files it did not write: one bad row or one bad file stops nothing.

Before, one unreadable timestamp raised out of numpy's parser, and one file that was not UTF-8 (or had no
``timestamp``/``value`` header) raised too: the whole folder's run ended with a traceback and wrote nothing.
Now a bad row is kept and scored as missing (as the live pipeline ignores such readings), a non-finite value
too, and a file that cannot be read at all is refused with its reason while the others are scored.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from analytics.numeric.batch import detect_path
from ioc import cli

pytestmark = pytest.mark.unit


def _good(path: Path, n: int = 60) -> None:
    stamps = np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(5, "m")
    rows = [f"{str(t).replace('T', ' ')},{50 + 10 * np.sin(k / 20):.3f}" for k, t in enumerate(stamps)]
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")


def _scored(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_bad_rows_are_kept_and_scored_as_missing(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _good(src / "a.csv")
    lines = (src / "a.csv").read_text().splitlines()
    lines[10] = "not a time,3"
    lines[11] = "2024-01-01 00:50:00,1e400"
    lines[12] = "2024-01-01 00:55:00,abc"
    lines[13] = "2024-01-01 01:00:00"  # a short row: no value
    lines[14] = ",,"
    (src / "a.csv").write_text("\n".join(lines) + "\n")
    assert detect_path(src, tmp_path / "out", progress=False) == 1
    rows = _scored(tmp_path / "out" / "a.csv")
    assert len(rows) == len(lines) - 1  # every input row is in the output, in order
    assert rows[9]["timestamp"] == "not a time" and float(rows[9]["anomaly_score"]) == 0.0
    for k in (9, 10, 11, 12, 13):
        assert float(rows[k]["anomaly_score"]) == 0.0 and rows[k]["type"] == ""
    assert rows[10]["value"] == "nan"  # an infinite value is no reading
    assert all(np.isfinite(float(r["anomaly_score"])) for r in rows)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00t\x00i\x00m\x00e", b"when,what\n1,2\n", b"",
                                     b"timestamp,value\n\x00,1\n", b"timestamp,value\n" + b"9" * 200_000 + b",1\n"],
                         ids=["not-utf8", "no-columns", "empty", "nul-byte", "huge-field"])
def test_an_unreadable_file_is_refused_and_the_others_are_scored(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _good(src / "a.csv")
    (src / "sub" / "b.csv").write_bytes(content)
    _good(src / "z.csv")
    refused: list[str] = []
    written = detect_path(src, tmp_path / "out", progress=False, refused=refused)
    if content.startswith(b"timestamp,value\n\x00"):  # Python's csv reads NUL as a character: a bad time
        assert written == 3 and not refused
        return
    assert written == 2 and len(refused) == 1 and refused[0].startswith(str(Path("sub/b.csv")))
    assert (tmp_path / "out" / "a.csv").exists() and (tmp_path / "out" / "z.csv").exists()


def test_the_cli_says_what_it_refused_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _good(src / "a.csv")
    (src / "b.csv").write_bytes(b"\xff\xff")
    assert cli.main(["detect", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "1 file(s) scored" in captured.out and "refused: b.csv: not UTF-8 text" in captured.err
