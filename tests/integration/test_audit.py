"""The verifiable exchange log and the data tracker, on a real Kafka (DESIGN §3.2).

Receipts match the leaves; proofs from the API check with our verifier and with transparency-dev's Go
one (deploy/checks/tlogcheck); tampering with a bundle or the topics is caught where it is; the writer
SIGKILLed mid-stream loses and doubles nothing, and its next checkpoint extends the last; a subject's
accesses are listed exactly, and only to the tracker.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from broker.audit import merkle
from broker.audit.api import access_rows, make_app
from broker.audit.index import Index, Reader, decode_chunk
from broker.audit.log import AuditLog, index_key, load_signer
from broker.audit.note import Checkpoint, NoteError, Signer, Verifier, sign
from broker.audit.verify import Tampered, export_day, read_checkpoints, verify_bundle, verify_kafka
from broker.dev.ports import free_port
from broker.kafka import Topics, ensure_topics, make_consumer, make_producer, read_to_end
from broker.metrics import AuditMetrics
from broker.model.records import TxRecord, day_of, subject_key
from broker.settings import Settings, child_environment
from tests.integration.exchange_fixtures import EchoHandlers, key_hash, running_adapter, running_gateway

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
GO_ENV = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
ALICE = {"Authorization": "Bearer key-alice"}
CAROL = {"Authorization": "Bearer key-carol"}  # the tracker (VNeID's role)
CITIZEN, OTHER = "079123456789", "001099012345"


@pytest.fixture
def audit_settings(exchange_settings: Settings, provider: str, tmp_path: Path) -> Settings:
    """The test provider's echo names its subject (msg); carol has the tracker right."""
    echo = exchange_settings.schemas_dir / provider / "echo.json"
    doc = json.loads(echo.read_text())
    echo.write_text(json.dumps({**doc, "x-ndxp-subject": ["msg"]}))
    reg = yaml.safe_load(exchange_settings.registry_path.read_text())
    reg["agencies"].append({"id": "carol", "code": "T.C", "name": "Carol the tracker", "roles": ["tracker"],
                            "keys_sha256": [key_hash("key-carol")]})  # fmt: skip
    exchange_settings.registry_path.write_text(yaml.safe_dump(reg))
    return exchange_settings.replace(
        subject_secret="test-subject-secret",
        audit_db=tmp_path / "audit.sqlite",
        audit_key=Signer.generate("test.ndxp/log").text(),
        audit_origin="test.ndxp/log",
        audit_checkpoint_s=0.2,
        cache_dir=tmp_path / "cache",
    )


@asynccontextmanager
async def running_audit(settings: Settings) -> AsyncIterator[tuple[AuditLog, str]]:
    log = AuditLog(settings, AuditMetrics(CollectorRegistry()))
    await log.start()
    reader = Reader(settings.audit_db or "")
    server = TestServer(
        make_app(reader, log.metrics, log.vkey, lambda: log.healthy, lambda: log.signed_at, log.tracker)
    )
    await server.start_server()
    try:
        yield log, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await log.stop()
        reader.close()


@pytest.fixture(scope="module")
def tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """transparency-dev's checkpoint, note and proof code, built into a checker (not our code)."""
    out = tmp_path_factory.mktemp("tlogcheck") / "tlogcheck"
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=ROOT / "deploy" / "checks" / "tlogcheck",
                   env=GO_ENV, check=True, timeout=600)  # fmt: skip
    return out


def _tlog(checker: Path, tmp_path: Path, evidence: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"evidence-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(evidence))
    return subprocess.run([str(checker), str(path)], capture_output=True, text=True, timeout=60)


async def _proof(http: ClientSession, exchange_id: str, headers: dict[str, str]) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            resp = await http.get(f"/v1/audit/exchanges/{exchange_id}", headers=headers)
            if resp.status == 200:
                body: dict[str, Any] = await resp.json()
                return body
            assert resp.status == 202, await resp.text()
            assert resp.headers["Retry-After"] == "1"
            await asyncio.sleep(0.1)


async def test_receipts_proofs_tracker_and_bundles(
    audit_settings: Settings, provider: str, tmp_path: Path, tlogcheck: Path
) -> None:
    handlers = EchoHandlers()
    async with running_audit(audit_settings) as (log, url):
        settings = audit_settings.replace(audit_url=url)
        async with running_adapter(settings, provider, handlers), running_gateway(settings) as (http, _gw):
            receipts: dict[str, str] = {}
            for i, (subject, who) in enumerate([(CITIZEN, "officer.1")] * 4 + [(OTHER, "officer.2")] * 2):
                resp = await http.post(
                    f"/v1/exchange/{provider}/echo", json={"msg": subject},
                    headers={**ALICE, "X-NDXP-User-Id": who, "X-NDXP-Purpose": f"case {i}"},
                )  # fmt: skip
                assert resp.status == 200, await resp.text()
                receipts[resp.headers["X-NDXP-Exchange-Id"]] = resp.headers["X-NDXP-Record-Hash"]
            refused = await http.post(f"/v1/exchange/{provider}/echo", json={"nope": 1}, headers=ALICE)
            assert refused.status == 400
            assert "X-NDXP-Record-Hash" in refused.headers

            vkey = await (await http.get("/v1/audit/key")).text()
            assert vkey.strip() == log.vkey
            verifier = Verifier.parse(vkey)
            first = next(iter(receipts))
            proof = await _proof(http, first, ALICE)
            assert proof["leaf_hash"] == receipts[first]
            assert proof["record"]["exchange_id"] == first
            assert "cccd" not in json.dumps(proof["record"])
            assert proof["record"]["request_sha256"]
            assert proof["record"]["subject"] != CITIZEN
            cp = Checkpoint.open(proof["checkpoint"], verifier, "test.ndxp/log")
            assert cp.size == proof["tree_size"]
            merkle.verify_inclusion(proof["leaf_index"], cp.size, bytes.fromhex(proof["leaf_hash"]),
                                    [bytes.fromhex(h) for h in proof["inclusion_proof"]],
                                    cp.root)  # fmt: skip
            provider_view = await _proof(http, first, {"Authorization": "Bearer key-provider"})
            assert provider_view["leaf_index"] == proof["leaf_index"]
            for stranger in ({"Authorization": "Bearer key-bob"}, CAROL):
                foreign = await http.get(f"/v1/audit/exchanges/{first}", headers=stranger)
                assert foreign.status == 404
            unknown = await http.get(
                "/v1/audit/exchanges/00000000-0000-4000-8000-000000000000", headers=ALICE
            )
            assert unknown.status == 404
            assert (await http.get(f"/v1/audit/exchanges/{first}")).status == 401

            # The independent verifier: the API's checkpoint and proof, and the leaf rebuilt from the record.
            leaf = (await _all_leaves(settings))[proof["leaf_index"]]
            assert merkle.leaf_hash(leaf).hex() == receipts[first]
            evidence = {"origin": "test.ndxp/log", "vkey": vkey.strip(), "checkpoint": proof["checkpoint"],
                        "leaf": base64.b64encode(leaf).decode(), "leaf_index": proof["leaf_index"],
                        "inclusion_proof": proof["inclusion_proof"]}  # fmt: skip
            ok = _tlog(tlogcheck, tmp_path, evidence)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert ok.stdout.startswith("OK"), ok.stdout
            bad = _tlog(tlogcheck, tmp_path, {**evidence, "leaf": base64.b64encode(leaf + b" ").decode()})
            assert bad.returncode == 1, bad.stdout
            forged = sign(
                Checkpoint("test.ndxp/log", cp.size, cp.root).text(), Signer.generate("test.ndxp/log")
            )
            assert _tlog(tlogcheck, tmp_path, {**evidence, "checkpoint": forged}).returncode == 1

            # A later checkpoint extends this one: the API's consistency proof, checked by both verifiers.
            last = list(receipts)[-1]
            later = await _proof(http, last, ALICE)
            if later["tree_size"] == cp.size:  # the same checkpoint covers both: wait for a larger one
                await http.post(f"/v1/exchange/{provider}/echo", json={"msg": "more"}, headers=ALICE)
                async with asyncio.timeout(30):
                    while later["tree_size"] == cp.size:
                        await asyncio.sleep(0.2)
                        later = await _proof(http, last, ALICE)
            cons = await (
                await http.get(f"/v1/audit/consistency?from={cp.size}&to={later['tree_size']}")
            ).json()
            new_cp = Checkpoint.open(later["checkpoint"], verifier)
            merkle.verify_consistency(cp.size, new_cp.size, cp.root, new_cp.root,
                                      [bytes.fromhex(h) for h in cons["proof"]])  # fmt: skip
            last_leaf = (await _all_leaves(settings))[later["leaf_index"]]
            both = _tlog(tlogcheck, tmp_path, {
                "origin": "test.ndxp/log", "vkey": vkey.strip(), "checkpoint": later["checkpoint"],
                "leaf": base64.b64encode(last_leaf).decode(), "leaf_index": later["leaf_index"],
                "inclusion_proof": later["inclusion_proof"], "old_checkpoint": proof["checkpoint"],
                "consistency_proof": cons["proof"]})  # fmt: skip
            assert both.returncode == 0, both.stdout + both.stderr
            assert (await http.get("/v1/audit/consistency?from=9&to=x")).status == 400

            # The data tracker: exactly the subject's accesses, to the tracker only.
            resp = await http.get(
                f"/v1/subjects/{CITIZEN}/accesses", headers={**CAROL, "X-NDXP-User-Id": "c1"}
            )
            assert resp.status == 200, await resp.text()
            found = await resp.json()
            assert found["subject"] == CITIZEN
            mine = [a for a in found["accesses"] if a["service"] == "echo"]
            assert len(mine) == 4
            assert {a["exchange_id"] for a in mine} <= set(receipts)
            assert {a["user_id"] for a in mine} == {"officer.1"}
            assert all(a["client"] == "alice" and a["client_name"] == "Alice" for a in mine)
            assert all(a["record_hash"] == receipts[a["exchange_id"]] for a in mine)
            other = await (await http.get(f"/v1/subjects/{OTHER}/accesses", headers=CAROL)).json()
            assert [a["user_id"] for a in other["accesses"] if a["service"] == "echo"] == ["officer.2"] * 2
            assert (await http.get(f"/v1/subjects/{CITIZEN}/accesses", headers=ALICE)).status == 403
            assert (await http.get(f"/v1/subjects/{'9' * 200}/accesses", headers=CAROL)).status == 400
            # The tracker's own query is an access in the log too (the citizen sees who looked).
            async with asyncio.timeout(30):
                while True:
                    again = await (await http.get(f"/v1/subjects/{CITIZEN}/accesses", headers=CAROL)).json()
                    if any(a["service"] == "tracker" and a["client"] == "carol" for a in again["accesses"]):
                        break
                    await asyncio.sleep(0.2)

        # Verify from Kafka, export today's bundle, verify it offline, then tamper with copies of it.
        await _settled(log)
        check = await verify_kafka(settings, {log.vkey}, progress=lambda _: None)
        assert log.index is not None
        assert check.frontier.size <= log.index.tree.size
        assert check.checked >= 2
        with pytest.raises(Tampered, match="not a trusted key"):
            await verify_kafka(settings, {Signer.generate("x").verifier().text()}, progress=lambda _: None)
        day = day_of(time.time() * 1000, settings.stats_utc_offset_hours)
        bundle = tmp_path / "bundle"
        await export_day(settings, day, bundle, progress=lambda _: None)
        assert verify_bundle(bundle).frontier.size >= check.frontier.size  # the log may have grown
        _bundle_passes_the_independent_verifier(bundle, tlogcheck, tmp_path, log.vkey)
        _tampering_is_caught(bundle, tmp_path)
        await _the_cli_verifies_and_exports(settings, log.vkey, day, tmp_path)

        # A checkpoint forged onto the topic: verify names it (the bundle cases above cover the rest).
        topic = Topics(settings).audit_checkpoints().name
        producer = make_producer(settings)
        await producer.start()
        try:
            size = check.frontier.size
            fake = sign(Checkpoint("test.ndxp/log", size, b"\x01" * 32).text(), load_signer(settings))
            await (await producer.send(topic, fake.encode(), key=index_key(size)))
            # The log may have grown meanwhile (the tracker's polls are exchanges too): then the forged
            # one is also a rollback; either way it is the one named.
            named = rf"checkpoint of size {size} \(.*@\d+\) (is a second one|rolls the log back)"
            with pytest.raises(Tampered, match=named):
                await verify_kafka(settings, {log.vkey}, progress=lambda _: None)
        finally:
            await producer.stop()


async def _settled(log: AuditLog) -> None:
    async with asyncio.timeout(30):
        while log.index is None or log._checkpoint_size < log.index.tree.size:
            await asyncio.sleep(0.1)


def _bundle_passes_the_independent_verifier(bundle: Path, checker: Path, tmp_path: Path, vkey: str) -> None:
    """transparency-dev's verifier accepts the bundle's checkpoints, a consistency proof between two
    of them, and a leaf's inclusion (the path made from the bundle's leaves)."""
    cps = [json.loads(x) for x in (bundle / "checkpoints.jsonl").read_text().splitlines()]
    cons = json.loads((bundle / "consistency.jsonl").read_text().splitlines()[0])
    old, new = (
        next(c for c in cps if c["size"] == cons["from"]),
        next(c for c in cps if c["size"] == cons["to"]),
    )
    leaves = [
        base64.b64decode(json.loads(x)["leaf"]) for x in (bundle / "leaves.jsonl").read_text().splitlines()
    ]
    tree = merkle.Tree()
    tree.append([merkle.leaf_hash(x) for x in leaves[: new["size"]]])
    evidence = {"origin": "test.ndxp/log", "vkey": vkey, "checkpoint": new["note"],
                "leaf": base64.b64encode(leaves[1]).decode(), "leaf_index": 1,
                "inclusion_proof": [h.hex() for h in tree.inclusion(1, new["size"])],
                "old_checkpoint": old["note"], "consistency_proof": cons["proof"]}  # fmt: skip
    ok = _tlog(checker, tmp_path, evidence)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _tlog(checker, tmp_path, {**evidence, "consistency_proof": [*cons["proof"][::-1], "00" * 32]})
    assert bad.returncode == 1, bad.stdout


def _copy(bundle: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(bundle, out)
    return out


async def _audit_cli(settings: Settings, *args: str, exit_code: int = 0) -> tuple[str, str]:
    """``ndxp audit ARGS`` as an operator runs it (its own process, the test's Kafka): stdout, stderr."""
    env = child_environment(settings, TX_TOPIC=settings.tx_topic, AUDIT_ORIGIN=settings.audit_origin,
                            CACHE_DIR=str(settings.cache_dir))  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "audit", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == exit_code, err.decode()
    return out.decode(), err.decode()


async def _the_cli_verifies_and_exports(settings: Settings, vkey: str, day: str, tmp_path: Path) -> None:
    """The same checks through ``ndxp audit``: exit 0 with OK, exit 1 naming the fault."""
    _, err = await _audit_cli(settings, "verify", "--key", vkey)
    assert re.search(r"ndxp audit verify: OK: \d+ leaves, \d+ checkpoints checked \(Kafka\)", err), err
    stranger = Signer.generate("test.ndxp/log").verifier().text()
    _, err = await _audit_cli(settings, "verify", "--key", stranger, exit_code=1)
    assert "ndxp audit verify: FAILED:" in err
    assert "not a trusted key" in err
    bundle = tmp_path / "cli-bundle"
    await _audit_cli(settings, "export", "--day", day, "--out", str(bundle))
    leaves = (bundle / "leaves.jsonl").read_text().splitlines(keepends=True)
    assert leaves
    trusted = tmp_path / "trusted.txt"
    trusted.write_text(vkey + "\n")
    _, err = await _audit_cli(settings, "verify", "--bundle", str(bundle), "--keys-file", str(trusted))
    assert f"checkpoints checked ({bundle})" in err
    (bundle / "leaves.jsonl").write_text("".join(leaves[1:]))  # the day's first leaf dropped
    _, err = await _audit_cli(settings, "verify", "--bundle", str(bundle), exit_code=1)
    assert "ndxp audit verify: FAILED:" in err
    nothing = ("export", "--day", "2001-01-01", "--out", str(tmp_path / "x"))
    _, err = await _audit_cli(settings, *nothing, exit_code=1)
    assert "no checkpoint was written on 2001-01-01" in err
    out, err = await _audit_cli(settings, "keygen", "--name", "other.ndxp/log")
    assert Signer.parse(out.strip()).verifier().text() in err


def _tampering_is_caught(bundle: Path, tmp_path: Path) -> None:
    lines = (bundle / "leaves.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) >= 8
    # A byte changed in an answered exchange's record.
    changed = _copy(bundle, tmp_path, "changed")
    at = next(i for i, x in enumerate(lines) if b'"status":200' in base64.b64decode(json.loads(x)["leaf"]))
    doc = json.loads(lines[at])
    leaf = base64.b64decode(doc["leaf"]).replace(b'"status":200', b'"status":201', 1)
    (changed / "leaves.jsonl").write_text("".join(
        [*lines[:at], json.dumps({"index": doc["index"], "leaf": base64.b64encode(leaf).decode()}) + "\n",
         *lines[at + 1:]]))  # fmt: skip
    with pytest.raises(Tampered, match=r"does not match the leaves: one of leaves \d+\.\.\d+ was changed"):
        verify_bundle(changed)
    # A record dropped.
    dropped = _copy(bundle, tmp_path, "dropped")
    (dropped / "leaves.jsonl").write_text("".join([*lines[:5], *lines[6:]]))
    with pytest.raises(Tampered, match=f"leaf {json.loads(lines[5])['index']} is missing"):
        verify_bundle(dropped)
    # Two swapped.
    swapped = _copy(bundle, tmp_path, "swapped")
    (swapped / "leaves.jsonl").write_text("".join([*lines[:2], lines[3], lines[2], *lines[4:]]))
    with pytest.raises(Tampered, match=f"leaf {json.loads(lines[2])['index']} is missing"):
        verify_bundle(swapped)
    # The same, with the indexes rewritten to hide it: the checkpoint catches it.
    hidden = _copy(bundle, tmp_path, "hidden")
    a, b = json.loads(lines[2]), json.loads(lines[3])
    a["index"], b["index"] = b["index"], a["index"]
    (hidden / "leaves.jsonl").write_text("".join([*lines[:2], json.dumps(b) + "\n", json.dumps(a) + "\n",
                                                   *lines[4:]]))  # fmt: skip
    with pytest.raises(Tampered, match="does not match the leaves"):
        verify_bundle(hidden)
    # A checkpoint forged with another key, and one rolled back.
    cps = (bundle / "checkpoints.jsonl").read_text().splitlines(keepends=True)
    forged = _copy(bundle, tmp_path, "forged")
    first = json.loads(cps[0])
    text = first["note"].rpartition("\n\n")[0] + "\n"
    first["note"] = sign(text, Signer.generate(Checkpoint.parse_text(text).origin))
    (forged / "checkpoints.jsonl").write_text(json.dumps(first) + "\n" + "".join(cps[1:]))
    with pytest.raises(Tampered, match=f"checkpoint of size {first['size']} .* is forged"):
        verify_bundle(forged)
    if len(cps) >= 2:
        rolled = _copy(bundle, tmp_path, "rolled")
        (rolled / "checkpoints.jsonl").write_text("".join([*cps, cps[0]]))
        with pytest.raises(Tampered, match="rolls the log back"):
            verify_bundle(rolled)


async def test_the_writer_sigkilled_loses_and_doubles_nothing(
    audit_settings: Settings, tmp_path: Path
) -> None:
    """Records stream into ndxp.tx while the writer is SIGKILLed and restarted: every exchange is one
    leaf, the checkpoint after the restart extends the one before it, verify passes."""
    settings = audit_settings
    await ensure_topics(settings, [Topics(settings).tx()])
    env = child_environment(
        settings, TX_TOPIC=settings.tx_topic, AUDIT_DB=str(settings.audit_db),
        AUDIT_KEY=settings.audit_key or "",
        AUDIT_ORIGIN=settings.audit_origin, AUDIT_CHECKPOINT_S="0.2", AUDIT_PORT="0",
        CACHE_DIR=str(settings.cache_dir),
    )  # fmt: skip
    cmd = [sys.executable, "-m", "broker.cli", "audit", "serve"]
    t0 = time.time() * 1000
    records = [TxRecord(exchange_id=str(uuid.uuid4()), client="alice", provider="p", service="s",
                        outcome="ok",
                        status=200, t_in=t0 + i) for i in range(3000)]  # fmt: skip
    producer = make_producer(settings)
    await producer.start()
    out = (tmp_path / "audit.log").open("wb")
    procs: list[subprocess.Popen[bytes]] = []
    reader = None
    try:
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
        for i, rec in enumerate(records):
            await producer.send(settings.tx_topic, rec.encode())
            if i % 100 == 99:
                await producer.flush()
                await asyncio.sleep(0.02)
            if i % 500 == 0:  # some records twice, as a hedged write leaves them
                await producer.send(settings.tx_topic, rec.encode())
            if i == 1500:
                reader = Reader(settings.audit_db or "")
                async with asyncio.timeout(60):
                    while reader.latest_checkpoint() is None:
                        await asyncio.sleep(0.1)
                before = reader.latest_checkpoint()
                os.kill(procs[0].pid, signal.SIGKILL)
                procs[0].wait()
                procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
        await producer.flush()
        assert reader is not None
        assert before is not None
        async with asyncio.timeout(120):
            while (reader.latest_checkpoint() or (0, ""))[0] < len(records) + 1:  # + the key leaf
                await asyncio.sleep(0.2)
        after = reader.latest_checkpoint()
        assert after is not None
        assert after[0] == len(records) + 1, "a leaf lost or doubled"
        procs[-1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(procs[-1].wait, 30) == 0
    finally:
        out.close()
        await producer.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    vkey = Signer.parse(settings.audit_key or "").verifier()
    old, new = Checkpoint.open(before[1], vkey), Checkpoint.open(after[1], vkey)
    merkle.verify_consistency(
        old.size, new.size, old.root, new.root, reader.tree().consistency(old.size, new.size)
    )
    reader.close()
    check = await verify_kafka(settings, {vkey.text()}, progress=lambda _: None)
    assert check.frontier.size == len(records) + 1
    ids = [json.loads(x)["exchange_id"] for x in await _all_leaves(settings) if b'"exchange_id"' in x]
    assert sorted(ids) == sorted(r.exchange_id for r in records)

    # The index is a cache of Kafka: deleted, or another log's (a new Kafka), it is rebuilt from the topics.
    db = Path(settings.audit_db or "")
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    await _rebuilt_matches(settings, new)
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    foreign = Index(db)
    foreign.begin()
    foreign.append(
        [
            TxRecord(
                exchange_id="of-another-log",
                client="a",
                provider="p",
                service="s",
                outcome="ok",
                status=200,
                t_in=0,
            ).encode()
        ]
    )
    foreign.commit(leaves_offset=1)
    foreign.close()
    await _rebuilt_matches(settings, new)


async def _rebuilt_matches(settings: Settings, cp: Checkpoint) -> None:
    log = AuditLog(settings, AuditMetrics(CollectorRegistry()))
    await log.start()
    try:
        assert log.index is not None
        assert log.index.tree.size >= cp.size
        assert log.index.tree.root(cp.size) == cp.root
        assert log.index.has_exchange("of-another-log") is False
    finally:
        await log.stop()


async def _send(settings: Settings, records: list[TxRecord]) -> None:
    """Transaction records onto the settings' ndxp.tx, as gateways write them."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for rec in records:
            await producer.send(settings.tx_topic, rec.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _all_leaves(settings: Settings) -> list[bytes]:
    """Every leaf in the leaves topic, in order (a leaf's index is its place here)."""
    consumer = make_consumer(settings, group_id=None, isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(Topics(settings).audit_leaves().name, 0)
        return [leaf for m in await read_to_end(consumer, tp) for leaf in decode_chunk(m.value or b"")]
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """Debian's PostgreSQL server on a loopback port, in a directory of its own (removed after)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("Debian's PostgreSQL server is needed (scripts/setup installs it)", pytrace=False)
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="ndxp-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    pg(str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    pg(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
       f"-p {port} -c listen_addresses=127.0.0.1 -k {data}", "start")  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


async def test_the_tracker_on_postgresql_and_on_sqlite_answers_the_same(
    audit_settings: Settings, postgres: str, tmp_path: Path
) -> None:
    """A subject's accesses by three agencies, exactly, and not another subject's; PostgreSQL and SQLite
    agree, and PostgreSQL catches up from the index after losing rows."""
    settings = audit_settings.replace(tracker_dsn=postgres)
    await ensure_topics(settings, [Topics(settings).tx()])
    t0 = time.time() * 1000
    people = {name: subject_key("test-subject-secret", name) for name in (CITIZEN, OTHER)}
    clients, persons = ("hanoi", "bhxh", "vcb"), (CITIZEN, OTHER, CITIZEN)
    plan = [(client, person) for client in clients for person in persons]
    records = [
        TxRecord(exchange_id=str(uuid.uuid4()), client=client, provider="bca", service="citizen",
                 outcome="ok", status=200, t_in=t0 + i, user_id=f"officer.{i}", purpose="case",
                 subject=people[person])
        for i, (client, person) in enumerate(plan)
    ]  # fmt: skip
    await _send(settings, records)

    async def answers(url: str, http: ClientSession) -> dict[str, Any]:
        out = {}
        for name, key in people.items():
            resp = await http.get(f"{url}/subjects/{key}/accesses")
            assert resp.status == 200, await resp.text()
            out[name] = (await resp.json())["accesses"]
        return out

    async with running_audit(settings) as (_, url), ClientSession() as http:
        # The writer's tree grows before Kafka commits; the index and PostgreSQL follow the commit.
        async with asyncio.timeout(60):
            while sum(map(len, (from_pg := await answers(url, http)).values())) < len(records):
                await asyncio.sleep(0.1)
        reader = Reader(settings.audit_db or "")
        try:
            from_sqlite = {name: access_rows(reader, key) for name, key in people.items()}
        finally:
            reader.close()
    assert from_pg == from_sqlite
    mine = from_pg[CITIZEN]
    assert sorted((a["client"], a["user_id"]) for a in mine) == sorted(  # in the log's order, Kafka's
        (r.client, r.user_id) for r in records if r.subject == people[CITIZEN]
    )
    assert [a["leaf_index"] for a in mine] == sorted(a["leaf_index"] for a in mine)
    assert {a["client"] for a in mine} == {"hanoi", "bhxh", "vcb"}
    assert not {a["exchange_id"] for a in mine} & {a["exchange_id"] for a in from_pg[OTHER]}

    conn = await asyncpg.connect(postgres)
    try:
        await conn.execute("DELETE FROM ndxp_tracker_accesses WHERE idx > 3")
    finally:
        await conn.close()
    async with running_audit(settings) as (_, url), ClientSession() as http:
        assert await answers(url, http) == from_pg, "PostgreSQL caught up from the index on start"


async def test_a_new_signing_key_is_recorded_and_old_checkpoints_stay_verifiable(
    audit_settings: Settings,
) -> None:
    old = Signer.parse(audit_settings.audit_key or "")
    new = Signer.generate("test.ndxp/log")
    settings = audit_settings
    await ensure_topics(settings, [Topics(settings).tx()])

    async def send(n: int) -> None:
        await _send(settings, [TxRecord(exchange_id=str(uuid.uuid4()), client="alice", provider="p",
                                        service="s", outcome="ok", status=200, t_in=time.time() * 1000 + i)
                               for i in range(n)])  # fmt: skip

    async def covered(log: AuditLog, size: int) -> None:
        async with asyncio.timeout(60):
            while log._checkpoint_size < size:
                await asyncio.sleep(0.1)

    await send(5)
    async with running_audit(settings) as (log, _):
        await covered(log, 6)  # the key leaf, then 5 records
    await send(5)
    rotated = settings.replace(audit_key=new.text())
    async with running_audit(rotated) as (log, _):
        await covered(log, 12)  # the new key's leaf, then 5 more
    check = await verify_kafka(
        rotated, {old.verifier().text(), new.verifier().text()}, progress=lambda _: None
    )
    assert check.keys_seen == [old.verifier().text(), new.verifier().text()]
    assert check.frontier.size == 12
    with pytest.raises(Tampered, match="not a trusted key"):
        await verify_kafka(rotated, {new.verifier().text()}, progress=lambda _: None)
    cps = await read_checkpoints(rotated)
    before, after = [c for c in cps if c.size <= 6], [c for c in cps if c.size > 7]
    assert before
    assert after
    for c in before:
        Checkpoint.open(c.note, old.verifier())
        with pytest.raises(NoteError):
            Checkpoint.open(c.note, new.verifier())
    for c in after:
        Checkpoint.open(c.note, new.verifier())
