"""Signed consent receipts, offline: build, sign, verify; every tampering fails by name.

The evidence document here is made as :func:`agi.ledger.evidence.build_evidence` makes it
(canonical form and hash by :mod:`agi.ledger.chain`), without a database;
tests/integration/cli/test_receipt_cli.py does the same against the real ledger.
"""

from __future__ import annotations

import base64
import copy
import json
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from agi.ledger.chain import CANONICAL_COLUMNS, GENESIS, canonical, event_hash
from agi.outbound.policy import SIX_MONTHS, get_profile
from agi.reports import keys, receipt

NUMBER = "+442079460018"
ORG = "Example Energy Ltd"
T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def row(ident: int, decision: str, day: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {c: None for c in CANONICAL_COLUMNS}
    decided = T0 + timedelta(days=day)
    base.update(
        id=ident, recorded_at=(decided + timedelta(milliseconds=40)).isoformat(),
        decided_at=decided.isoformat(), number_e164=NUMBER, organisation=ORG,
        purpose="marketing-calls", channel="automated_call", decision=decision,
        method="ivr_inbound", captured_by="first_party", evidence_strength="caller_id",
        digits=[{"step": "question", "digit": "1", "offset_ms": 5230, "ignored": False},
                {"step": "statement", "digit": "1", "offset_ms": 6100, "ignored": True},
                {"step": "confirm", "digit": "1", "offset_ms": 21400, "ignored": False}],
        prompts=[
            # recorded before lengths were kept: heard in full must read "unknown"
            {"id": "identify", "lang": "en", "sha256": "a" * 64, "text": "This is Example Energy.",
             "interrupted": False},
            {"id": "statement-marketing-calls", "lang": "en", "sha256": "b" * 64,
             "text": "We will call you with offers.", "interrupted": False,
             "heard_ms": 8200, "length_ms": 8200},
            {"id": "confirm-opt-in", "lang": "en", "sha256": "c" * 64,
             "text": "To confirm, press 1.", "interrupted": True, "heard_ms": 900,
             "length_ms": 2500},
        ],
        uniqueid=f"1700.{ident}", linkedid=f"1700.{ident}", channel_name=f"PJSIP/a-{ident}",
        callerid_num="02079460018", callerid_name="Jane\nDoe",
        call_started_at=(decided - timedelta(seconds=25)).isoformat(),
        instance="srv-1", source="live", idempotency_key=f"1700.{ident}|decision",
    )
    base.update(changes)
    return base


def evidence(*rows: dict[str, Any]) -> dict[str, Any]:
    prev = GENESIS
    events = []
    for r in rows:
        digest = event_hash(prev, r)
        item = dict(r)
        item["chain"] = {"prev_hash": prev.hex(), "hash": digest.hex(), "canonical": canonical(r),
                         "hash_recomputes": True, "status": "verified"}
        events.append(item)
        prev = digest
    return {"number": NUMBER, "generated_at": NOW.isoformat(), "events": events,
            "chain": {"ok": True, "checked": len(rows), "last_id": rows[-1]["id"],
                      "head_hash": prev.hex(), "first_break": None}}


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    keys.create_key(directory, ORG, now=T0)
    return directory


def make(key_dir: Path, ev: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return receipt.receipt_for(ev or evidence(row(1, "opt_in", 0)), keys.active_key(key_dir),
                               fqhn="ivr.example.com", now=NOW, **kw)


def check(doc: dict[str, Any] | str, key_dir: Path,
          known: dict[str, Any] | None = None) -> receipt.VerifyReport:
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=2)
    return receipt.verify_receipt(text, keys.public_keys(key_dir) if known is None else known,
                                  now=NOW)


def payload(doc: dict[str, Any]) -> dict[str, Any]:
    raw = doc["payload"]
    return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


def b64(data: dict[str, Any]) -> str:
    text = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


# --------------------------------------------------------------------------- the good receipt


def test_a_good_receipt_verifies_and_says_what_it_proves(key_dir: Path) -> None:
    doc = make(key_dir)
    report = check(doc, key_dir)
    assert report.ok, report.failure
    assert [c.name for c in report.checks] == ["file", "algorithm", "key", "certificate",
                                               "signature", "content"]
    assert "event #1: granted for marketing-calls" in report.notes[0]
    assert "no expiry" in report.notes[0] and "the chain head" in report.notes[0]
    text = receipt.render_verify(report, "r.json")
    assert text.startswith("receipt r.json: VALID\n") and "✓ signature: verifies" in text


def test_the_signed_form_is_the_drafts(tmp_path: Path) -> None:
    key = keys.create_key(tmp_path / "k", ORG)
    doc = receipt.receipt_for(evidence(row(1, "opt_in", 0)), key, fqhn="ivr.example.com", now=NOW)
    assert set(doc) == {"payload", "signatures"}  # General JWS JSON Serialization
    sig = doc["signatures"][0]
    protected = json.loads(base64.urlsafe_b64decode(sig["protected"] + "=="))
    assert protected == {"alg": "EdDSA", "kid": key.kid, "cty": "application/vcon+json"}
    assert set(sig["header"]) == {"x5c", "uuid"}  # vcon-core: x5c (or x5u) unprotected
    v = payload(doc)
    assert sig["header"]["uuid"] == v["uuid"] and v["uuid"][14] == "8"  # a version 8 UUID
    assert key.kid == OKPKey.import_key(key.private_key).thumbprint()  # RFC 7638


def test_the_vcon_carries_parties_dialog_analysis_and_the_consent_attachment(
    key_dir: Path,
) -> None:
    v = payload(make(key_dir))
    assert v["vcon"] == "0.4.0" and v["created_at"] == NOW.isoformat()
    assert v["parties"] == [{"tel": f"tel:{NUMBER}", "validation": "caller_id"},
                            {"name": ORG, "validation": "none"}]
    dialog = v["dialog"][0]
    assert dialog["type"] == "text" and dialog["parties"] == [0, 1]
    assert dialog["consent_ivr"]["audio_recorded"] is False and "url" not in dialog
    assert "No audio was recorded" in dialog["body"]
    heard = [(p["id"], p["heard_in_full"]) for p in dialog["consent_ivr"]["prompts"]]
    # never "yes" for a prompt whose lengths were not recorded
    assert heard == [("identify", "unknown"), ("statement-marketing-calls", "yes"),
                     ("confirm-opt-in", "no")]
    assert [k["ignored"] for k in dialog["consent_ivr"]["keys"]] == [False, True, False]
    assert [(h["event"], h["dtmf"]) for h in dialog["party_history"]] == [("dtmfdown", "1")] * 3
    assert dialog["party_history"][0]["time"] == (T0 - timedelta(seconds=25)
                                                  + timedelta(milliseconds=5230)).isoformat()
    assert v["analysis"][0]["body"]["statement_heard_in_full"] == "yes"
    assert v["analysis"][0]["body"]["keys_ignored"] == ["1"]
    att = v["attachments"][0]
    assert (att["type"], att["party"], att["dialog"], att["expiration"]) == ("consent", 0, 0, None)
    c = att["consents"][0]
    assert (c["purpose"], c["status"], c["value"], c["profile"]) == (
        "marketing-calls", "granted", True, "uk-pecr")
    ledger = att["proof"][1]["value"]
    assert ledger["event_id"] == 1 and ledger["prev_hash"] == GENESIS.hex()
    assert ledger["chain_head"]["last_id"] == 1 and ledger["chain_head"]["hash"] == ledger["hash"]
    assert att["proof"][0]["value"]["keys"] == [
        {"step": "question", "digit": "1", "offset_ms": 5230, "ignored": False},
        {"step": "confirm", "digit": "1", "offset_ms": 21400, "ignored": False}]


def test_an_opt_out_after_an_opt_in_is_a_withdrawal_and_names_it(key_dir: Path) -> None:
    ev = evidence(row(1, "opt_in", 0), row(2, "opt_out", 3), row(3, "opt_out", 4))
    v = payload(make(key_dir, ev))
    statuses = [a["consents"][0]["status"] for a in v["attachments"]]
    assert statuses == ["granted", "revoked", "denied"]
    assert v["attachments"][1]["supersedes"] == {"event_id": 1,
                                                  "hash": ev["events"][0]["chain"]["hash"]}
    assert len(v["dialog"]) == 3 and [a["dialog"] for a in v["attachments"]] == [0, 1, 2]
    assert check(make(key_dir, ev), key_dir).ok
    one = make(key_dir, ev, event_id=2)
    assert [a["consents"][0]["status"] for a in payload(one)["attachments"]] == ["revoked"]
    assert check(one, key_dir).ok


def test_a_profile_sets_the_expiry_of_third_party_consent(key_dir: Path) -> None:
    third = row(1, "opt_in", 0, captured_by="third_party", third_party_name="Partner Ltd")
    v = payload(make(key_dir, evidence(third)))
    recorded = datetime.fromisoformat(third["recorded_at"])
    assert v["attachments"][0]["expiration"] == (recorded + SIX_MONTHS).isoformat()
    tcpa = payload(make(key_dir, evidence(third), profile=get_profile("us-tcpa")))
    assert tcpa["attachments"][0]["expiration"] is None  # the profile sets no maximum age
    late = receipt.verify_receipt(json.dumps(make(key_dir, evidence(third))),
                                  keys.public_keys(key_dir), now=recorded + timedelta(days=200))
    assert late.ok and "EXPIRED at" in late.notes[0]


def test_no_receipt_for_an_event_the_chain_does_not_vouch_for(key_dir: Path) -> None:
    ev = evidence(row(1, "opt_in", 0))
    ev["events"][0]["chain"]["status"] = "broken"
    with pytest.raises(receipt.ReceiptError, match="fails the ledger's hash chain"):
        make(key_dir, ev)
    with pytest.raises(receipt.ReceiptError, match="no consent event 9"):
        make(key_dir, event_id=9)


def test_the_canonical_form_parses_back_to_the_row() -> None:
    r = row(5, "opt_in", 1)
    assert receipt.parse_canonical(canonical(r)) == r
    for bad in ("", canonical(r).replace("id=1:5", "id=1:55"), canonical(r) + "x"):
        with pytest.raises(ValueError):
            receipt.parse_canonical(bad)


# --------------------------------------------------------------------------- tampering


def _edit(change: Callable[[dict[str, Any]], None], *,
          resign: bool = False) -> Callable[[dict[str, Any], Path], dict[str, Any] | str]:
    """Edit the payload; ``resign``: then sign it again with the organisation's key (an
    insider who can sign, or a bug), which only the ledger cross-checks can catch."""
    def tamper(doc: dict[str, Any], key_dir: Path) -> dict[str, Any]:
        v = payload(doc)
        change(v)
        if resign:
            return receipt.sign_vcon(v, keys.active_key(key_dir))
        doc["payload"] = b64(v)
        return doc
    return tamper


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(v: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = v
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return change


def _flip_signature(doc: dict[str, Any], _: Path) -> dict[str, Any]:
    s = doc["signatures"][0]["signature"]
    doc["signatures"][0]["signature"] = ("A" if s[0] != "A" else "B") + s[1:]
    return doc


def _protected(**changes: Any) -> Callable[[dict[str, Any], Path], dict[str, Any]]:
    def tamper(doc: dict[str, Any], _: Path) -> dict[str, Any]:
        sig = doc["signatures"][0]
        header = json.loads(base64.urlsafe_b64decode(sig["protected"] + "=="))
        sig["protected"] = b64(header | changes)
        return doc
    return tamper


def _drop_x5c(doc: dict[str, Any], _: Path) -> dict[str, Any]:
    del doc["signatures"][0]["header"]["x5c"]
    return doc


def _canonical_decision(v: dict[str, Any]) -> None:
    ledger = v["attachments"][0]["proof"][1]["value"]
    ledger["canonical"] = ledger["canonical"].replace("decision=6:opt_in", "decision=7:opt_out")


TAMPERINGS: list[tuple[str, Callable[..., Any], str]] = [
    ("payload: consent status",
     _edit(_set("attachments.0.consents.0.status", "revoked")),
     "signature: does not verify with key {kid}; the payload was edited: "
     "attachments[0].consents[0].status is \"revoked\", the ledger record gives \"granted\""),
    ("payload: heard in full",
     _edit(_set("dialog.0.consent_ivr.prompts.0.heard_in_full", "yes")),
     "the payload was edited: dialog[0].consent_ivr.prompts[0].heard_in_full is \"yes\""),
    ("payload: the number",
     _edit(_set("parties.0.tel", "tel:+447400000000")),
     "the payload was edited: parties[0].tel is \"tel:+447400000000\""),
    ("signature bytes", _flip_signature,
     "signature: does not verify with key {kid}; the payload agrees with its own ledger proof, "
     "so the signature bytes or the signed header were altered"),
    ("header kid", _protected(kid="someone-elses-key"),
     "key: the receipt names key 'someone-elses-key', which is not known"),
    ("header alg", _protected(alg="HS256"),
     "algorithm: the protected header names alg 'HS256'"),
    ("header x5c", _drop_x5c, "certificate: no readable x5c certificate"),
    ("truncated file", lambda doc, _: json.dumps(doc, indent=2)[:900],
     "file: the JSON ends early (line"),
    ("not JSON", lambda doc, _: "Consent receipt\n{}", "file: not JSON (Expecting value"),
    ("unsigned vCon", lambda doc, _: json.dumps(payload(doc)),
     "file: an unsigned vCon, not a signed receipt"),
    ("re-signed: canonical edited", _edit(_canonical_decision, resign=True),
     "content: attachments[0]: the event hash does not recompute from the embedded canonical"),
    ("re-signed: field edited",
     _edit(_set("attachments.0.consents.0.value", False), resign=True),
     "content: attachments[0].consents[0].value is false, the ledger record gives true"),
    ("re-signed: consent attachment removed", _edit(_set("attachments", []), resign=True),
     "content: the vCon has no consent attachment"),
]


@pytest.mark.parametrize(("tamper", "message"), [t[1:] for t in TAMPERINGS],
                         ids=[t[0] for t in TAMPERINGS])
def test_each_tampering_fails_naming_what_failed(
    tamper: Callable[..., Any], message: str, key_dir: Path
) -> None:
    good = make(key_dir)
    kid = keys.active_key(key_dir).kid
    bad = tamper(copy.deepcopy(good), key_dir)
    report = check(bad, key_dir)
    assert not report.ok
    assert report.failure is not None and message.format(kid=kid) in report.failure, (
        report.failure)
    assert check(good, key_dir).ok  # the tampering was the cause


def test_a_wrong_key_fails(key_dir: Path, tmp_path: Path) -> None:
    doc = make(key_dir)
    kid = keys.active_key(key_dir).kid
    other = Ed25519PrivateKey.generate().public_key()
    # --public-key with another organisation's key
    report = receipt.verify_receipt(json.dumps(doc), {keys.kid_of(other): other},
                                    key_source=f"--public-key is key {keys.kid_of(other)}")
    assert report.failure == (f"key: the receipt names key {kid!r}, which is not known "
                              f"(--public-key is key {keys.kid_of(other)}); pass the "
                              "organisation's public key with --public-key")
    # a key file replaced under the receipt's kid
    (key_dir / f"{kid}.pub").write_text(keys.public_pem(other))
    report = check(doc, key_dir)
    assert report.failure is not None and report.failure.startswith(
        f"key: the public key filed as {kid} is another key (its thumbprint is")


def test_a_kid_switched_to_another_known_key_fails_on_its_certificate(key_dir: Path) -> None:
    doc = make(key_dir)
    new, _old = keys.rotate_key(key_dir, ORG)
    report = check(_protected(kid=new.kid)(copy.deepcopy(doc), key_dir), key_dir)
    assert report.failure == f"certificate: the x5c certificate carries another key than {new.kid}"


def test_a_receipt_signed_before_rotation_still_verifies_with_the_kept_public_key(
    key_dir: Path,
) -> None:
    old_doc = make(key_dir)
    old_kid = keys.active_key(key_dir).kid
    new, retired = keys.rotate_key(key_dir, ORG)
    assert retired == old_kid and new.kid != old_kid
    assert not (key_dir / f"{old_kid}.key").exists() and (key_dir / f"{old_kid}.pub").exists()
    assert check(old_doc, key_dir).ok
    new_doc = make(key_dir)
    assert json.loads(base64.urlsafe_b64decode(
        new_doc["signatures"][0]["protected"] + "=="))["kid"] == new.kid
    assert check(new_doc, key_dir).ok
    # and with that one public key alone, as a --public-key file
    pub = keys.load_public_key_file(key_dir / f"{old_kid}.pub")
    assert receipt.verify_receipt(json.dumps(old_doc), {keys.kid_of(pub): pub}).ok


# --------------------------------------------------------------------------- keys


def test_keys_create_private_0600_refuse_twice_and_list(tmp_path: Path) -> None:
    directory = tmp_path / "k"
    key = keys.create_key(directory, ORG)
    assert stat.S_IMODE((directory / f"{key.kid}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    with pytest.raises(keys.KeyStoreError, match="already holds signing keys"):
        keys.create_key(directory, ORG)
    new, _ = keys.rotate_key(directory, ORG)
    listed = keys.list_keys(directory)
    assert [(k.kid, k.active, k.has_private) for k in listed] == [
        (new.kid, True, True), (key.kid, False, False)]
    assert listed[0].public_pem.startswith("-----BEGIN PUBLIC KEY-----")


def test_keys_read_nothing_from_a_missing_directory(tmp_path: Path) -> None:
    assert keys.public_keys(tmp_path / "none") == {}
    with pytest.raises(keys.KeyStoreError, match="keys create"):
        keys.active_key(tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_public_key_files_in_every_form_load(key_dir: Path, tmp_path: Path) -> None:
    kid = keys.active_key(key_dir).kid
    jwk = tmp_path / "k.jwk"
    jwk.write_text(json.dumps(OKPKey.import_key(
        (key_dir / f"{kid}.pub").read_bytes()).as_dict()))
    for path in (key_dir / f"{kid}.pub", key_dir / f"{kid}.crt", jwk):
        assert keys.kid_of(keys.load_public_key_file(path)) == kid
    junk = tmp_path / "junk"
    junk.write_text("not a key")
    with pytest.raises(keys.KeyStoreError, match="not a public key"):
        keys.load_public_key_file(junk)
