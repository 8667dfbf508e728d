"""``progress_bar``: the runner's ``(done, total)`` callback drawn as one tqdm bar."""

from __future__ import annotations

import pytest

from analoglab.experiments.progress import progress_bar


def test_the_bar_follows_the_runner_and_closes(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar("steering · tiny", mininterval=0) as progress:
        progress(0, 4)
        progress(3, 4)
        progress(5, 5)  # the runner may raise its total as it learns more
    err = capsys.readouterr().err
    assert "steering · tiny" in err and "3/4" in err and "5/5" in err


def test_the_bar_closes_when_the_run_fails(capsys: pytest.CaptureFixture[str]) -> None:
    from tqdm.std import tqdm

    with pytest.raises(RuntimeError), progress_bar("probe", mininterval=0) as progress:
        progress(1, 2)
        assert len(tqdm._instances) == 1
        raise RuntimeError("boom")
    assert "1/2" in capsys.readouterr().err
    assert len(tqdm._instances) == 0  # closed: no bar left redrawing in the notebook
