"""``featureloc evaluate``'s optional ``set`` column (issue 25): rows of one set are one query."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.evaluate import photo_sets
from core.errors import InputError


def _csv(tmp_path: Path, rows: list[str]) -> tuple[Path, list]:
    path = tmp_path / "queries.csv"
    path.write_text("id,x,y,set\n" + "\n".join(rows) + "\n")
    qs = []
    for line in rows:
        rid, x, y, _ = line.split(",")
        qs.append((rid, tmp_path / f"{rid}.jpg", float(x), float(y)))
    return path, qs


def test_rows_of_one_set_are_one_query_at_their_shared_truth(tmp_path) -> None:
    path, qs = _csv(
        tmp_path, ["a1,1,2,A", "lone,5,5,", "a2,1,2,A", "b1,7,8,B", "a3,1,2,A", "c1,3,3,C"]
    )
    out, photos = photo_sets(path, qs)
    # A set of one row (B, C) stays an ordinary query under its own id.
    assert [q[0] for q in out] == ["A", "lone", "b1", "c1"]
    assert out[0][2:] == (1.0, 2.0)
    assert list(photos) == [str(tmp_path / "a1.jpg")]
    assert photos[str(tmp_path / "a1.jpg")] == [tmp_path / f"a{i}.jpg" for i in (1, 2, 3)]


def test_a_csv_without_the_column_is_unchanged(tmp_path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("id,x,y\na,1,2\n")
    qs = [("a", tmp_path / "a.jpg", 1.0, 2.0)]
    assert photo_sets(path, qs) == (qs, {})


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        (["a1,1,2,A", "a2,1,3,A"], "2 different positions"),
        ([f"a{i},1,2,A" for i in range(9)], "2 to 8 photos"),
    ],
)
def test_a_bad_set_is_refused(tmp_path, rows, says) -> None:
    path, qs = _csv(tmp_path, rows)
    with pytest.raises(InputError, match=says):
        photo_sets(path, qs)
