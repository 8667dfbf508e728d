"""Killing an extraction (SIGKILL: no cleanup at all) and running it again gives exactly the
store an uninterrupted run gives: no duplicated rows, no gaps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from analoglab.activations import ActivationError, extract, open_activations
from analoglab.activations.store import ATTR, _acquire_lock
from analoglab.models.loading import LoadedModel

# Run in a child process: extract, and SIGKILL itself from the progress callback after a
# number of batches, while the writer thread may still hold unwritten rows.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from analoglab.activations import Source, extract
    from analoglab.models.loading import load_model

    model_dir, prompts_file, store, kill_after = sys.argv[1:5]

    class KillAfter:
        def note(self, message): pass
        def close(self): pass
        def steps(self, description, total, done=0):
            calls = [0]
            def update(done, numbers):
                calls[0] += 1
                if calls[0] == int(kill_after):
                    os.kill(os.getpid(), signal.SIGKILL)
            return update

    extract(load_model(model_dir, device="cpu"), Source.text_file(prompts_file), store=store,
            hooks=[0.0, 1.0, "blocks.1.attn.hook_z"], batch_size=3, chunk_mb=0.001,
            progress=KillAfter())
    """
)


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    found = {name: np.asarray(node[...]) for name, node in group.arrays()}
    found |= {f"hooks/{n}": np.asarray(a[...]) for n, a in group["hooks"].arrays()}
    return found


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [6])
def test_a_killed_extraction_resumes_to_the_same_store(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path, kill_after: int
) -> None:
    analog = tiny_models["analog"]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(prompts * 2) + "\n")  # 66 prompts, 22 batches
    store = tmp_path / "killed"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(analog.path),
            str(prompts_file),
            str(store),
            str(kill_after),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    meta = zarr.open_group(str(store), mode="r").attrs[ATTR]
    assert meta["state"] == "writing"
    done = meta["progress"]["prompts_done"]
    assert done % 3 == 0 and 0 < done < 66  # a batch boundary, mid-way

    kwargs: dict[str, Any] = {
        "hooks": [0.0, 1.0, "blocks.1.attn.hook_z"],
        "batch_size": 3,
        "chunk_mb": 0.001,
    }
    resumed = extract(analog, prompts_file, store=store, **kwargs)
    assert resumed.resumed_from == done and not resumed.already_complete
    extract(analog, prompts_file, store=tmp_path / "whole", **kwargs)
    got, want = arrays(store), arrays(tmp_path / "whole")
    assert set(got) == set(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert not list(store.rglob("*.partial"))
    ds = open_activations(store)
    assert ds.complete and ds.n_rows == resumed.rows


def test_a_store_being_written_is_locked(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    extract(analog, prompts, hooks=[1.0], store=tmp_path / "s", batch_size=4)
    lock = _acquire_lock(tmp_path / "s")  # as another extraction would hold it
    try:
        with pytest.raises(ActivationError, match="another extraction is writing"):
            extract(analog, prompts, hooks=[1.0], store=tmp_path / "s", overwrite=True)
    finally:
        lock.close()
    assert os.path.isdir(tmp_path / "s") and open_activations(tmp_path / "s").n_rows > 0
