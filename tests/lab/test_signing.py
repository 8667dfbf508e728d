"""Signed by the lab: the agent signs every result it posts with the site's key, the hub keeps
the signature and shows it with the released result, and anyone checks it against the lab's
public key in the catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analoglab import signing
from analoglab.config import Settings
from analoglab.lab.agent import Agent
from analoglab.lab.config import LabConfig
from analoglab.lab.executors import make_executor
from analoglab.lab.release import sign_result, verify_result
from analoglab.models.catalog import Catalog
from analoglab.queue.errors import QueueError

from .conftest import Hub, approved_job

pytestmark = pytest.mark.slow


def test_a_released_result_shows_who_signed_it(
    hub: Hub,
    site: LabConfig,
    tiny_home: Settings,
    sentiment_spec: dict[str, Any],
    tmp_path: Path,
    use_tiny_home: Settings,
) -> None:
    lab_key = Catalog.load(tiny_home).lab("tiny-lab").public_key
    assert lab_key is not None
    assert site.signing_key == tiny_home.lab_sites_path / "tiny-lab" / "signing.key"
    job = approved_job(hub, sentiment_spec)
    executor = make_executor(site)
    with hub.client("agent") as client:
        agent = Agent(site, client, executor, withheld_dir=tmp_path / "withheld")
        stats = agent.run(max_jobs=1)
    executor.close()
    assert stats.posted == 1
    with hub.client("researcher") as r:
        answer = r._call("GET", f"/api/jobs/{job['id']}/result")
    assert answer["key_id"] == signing.key_id(lab_key)
    assert verify_result(answer["result"], answer["signature"], lab_key) == answer["key_id"]

    altered = answer["result"] | {"metrics": {k: 1.0 for k in answer["result"]["metrics"]}}
    with pytest.raises(signing.SignatureError, match="does not verify"):
        verify_result(altered, answer["signature"], lab_key)
    with pytest.raises(signing.SignatureError, match="no signature"):
        verify_result(answer["result"], None, lab_key)

    # The command anyone can run on a saved answer.
    from typer.testing import CliRunner

    from analoglab.cli import app

    saved = tmp_path / "answer.json"
    saved.write_text(json.dumps(answer))
    runner = CliRunner()
    res = runner.invoke(app, ["lab", "verify-result", str(saved), "--lab", "tiny-lab"])
    assert res.exit_code == 0 and f"signed by lab key {answer['key_id']}" in res.output
    saved.write_text(json.dumps(answer | {"result": altered}))
    res = runner.invoke(app, ["lab", "verify-result", str(saved), "--public-key", lab_key])
    assert res.exit_code == 1 and "does not verify" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_the_hub_refuses_a_result_mis_signed_for_its_lab(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    first = approved_job(hub, sentiment_spec)
    executor = make_executor(site)
    with hub.client("agent") as client:
        Agent(site, client, executor, withheld_dir=tmp_path / "w").run(max_jobs=1)
    executor.close()
    with hub.client("reviewer") as v:
        result = v.result(first["id"])
    second = approved_job(hub, sentiment_spec)  # the same spec: the same result answers it
    with hub.client("agent") as c:
        claim = c.claim("tiny-lab", wait=0, lease_id="c" * 32)
        assert claim is not None and claim["job"]["id"] == second["id"]
        forged = sign_result(Ed25519PrivateKey.generate(), result)
        with pytest.raises(QueueError) as refused:
            c.post_result(second["id"], result, lease_id=claim["lease_id"],
                          signature=forged.signature, key_id=forged.key_id)
        assert refused.value.status == 422 and "signature does not hold" in str(refused.value)
        assert c.get(second["id"])["state"] == "running"  # nothing changed
        with pytest.raises(QueueError) as unsigned:  # the lab publishes a key: unsigned is out
            c.post_result(second["id"], result, lease_id=claim["lease_id"])
        assert unsigned.value.status == 422 and "must carry" in str(unsigned.value)
        assert c.get(second["id"])["state"] == "running"
        good = sign_result(signing.load_private_key(site.signing_key), result)  # type: ignore[arg-type]
        # a true signature with a false claim of who signed: the hub records the key it
        # verified under, never the claimed one
        done = c.post_result(second["id"], result, lease_id=claim["lease_id"],
                             signature=good.signature, key_id="0" * 16)
    assert done["state"] == "released"
    with hub.client("reviewer") as v:
        answer = v._call("GET", f"/api/jobs/{second['id']}/result")
    assert answer["key_id"] == good.key_id != "0" * 16
