"""Signed consent receipts: a decision's call as a vCon with a consent attachment, JWS-signed.

Pure: no SQL, no files. The input is the evidence document of
:func:`agi.ledger.evidence.build_evidence` (events with their canonical form and chain proof); the
output is a vCon
(draft-ietf-vcon-vcon-core, syntax ``0.4.0``) whose

* ``parties`` are the consenting number (``tel:`` URI) and the organisation(s) asking;
* ``dialog`` holds one ``text`` entry per call: what was played (prompt id, language, exact
  words, sha256 of the audio file, how much was heard) and pressed (each key, its offset, and
  whether it was ignored during a statement). **No audio**: the product records none, and the
  vCon says so (``consent_ivr.audio_recorded: false``);
* ``analysis`` says, per call, which prompts were heard in full (``yes``/``no``/``unknown``);
* ``attachments`` carry one consent attachment (draft-howe-vcon-consent-00) per decision, with
  the ledger proof: the event's canonical form, ``prev_hash``, ``hash`` and the chain head.

:func:`sign_vcon` wraps it in the draft's signed form (General JWS JSON Serialization,
``EdDSA`` over Ed25519, ``x5c`` and ``uuid`` in the unprotected header, ``kid`` protected).
:func:`verify_receipt` checks one offline, with no database: the signature, the key, the vCon's
shape, that each event hash recomputes from the embedded canonical form, and that every field
of the vCon is the one the canonical form gives — the vCon is rebuilt from the canonical rows
with the same code that built it, so an edited field is named. ``docs/receipts.md`` lists the
choices made where the drafts are open.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import OKPKey
from joserfc.registry import HeaderParameter

from agi.ledger.chain import CANONICAL_COLUMNS, CANONICAL_VERSION, canonical
from agi.ledger.records import heard_in_full, statement_heard
from agi.outbound.policy import Profile, UnknownProfileError, get_profile
from agi.reports.keys import SigningKey, certificate_der_b64, kid_of

__all__ = [
    "CONSENT_DRAFT",
    "RECEIPT_EXTENSION",
    "VCON_SYNTAX",
    "Check",
    "ReceiptError",
    "VerifyReport",
    "build_vcon",
    "make_vcon_uuid",
    "parse_canonical",
    "receipt_events",
    "receipt_for",
    "render_verify",
    "sign_vcon",
    "verify_receipt",
]

VCON_SYNTAX: Final = "0.4.0"
CONSENT_DRAFT: Final = "draft-howe-vcon-consent-00"
#: this product's own parameters (dialog ``consent_ivr``, the analysis body, proof values)
RECEIPT_EXTENSION: Final = "consent-ivr"
SIGN_ALG: Final = "EdDSA"
#: ``Ed25519`` is RFC 9864's fully-specified name for the same signature
ACCEPTED_ALGS: Final = ("EdDSA", "Ed25519")
#: the draft's default maximum clock skew when judging expiry
CLOCK_SKEW: Final = timedelta(minutes=5)

_TIMESTAMPS: Final = frozenset({"recorded_at", "decided_at", "call_started_at"})
_JSONB: Final = frozenset({"digits", "prompts"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_REGISTRY: Final = jws.JWSRegistry(
    header_registry={"uuid": HeaderParameter("the vCon's UUID (vcon-core signed form)", "str")},
    algorithms=list(ACCEPTED_ALGS),
)


class ReceiptError(ValueError):
    """Input that cannot make a receipt (no such event, an event that fails the chain)."""


# --------------------------------------------------------------------------- canonical form


def parse_canonical(text: str) -> dict[str, Any]:
    """The event row back from its canonical form (:func:`agi.ledger.chain.canonical`).

    Values come back typed as the evidence document has them: ``id`` an int, timestamps
    ISO strings (UTC), ``digits``/``prompts`` parsed JSON, the rest strings or ``None``.
    Raises :class:`ValueError` on anything that is not exactly that form.

    >>> row = parse_canonical(canonical({c: None for c in CANONICAL_COLUMNS} | {"id": 7}))
    >>> row["id"], row["purpose"]
    (7, None)
    """
    data = text.encode("utf-8")
    head = f"{CANONICAL_VERSION}\n".encode()
    if not data.startswith(head):
        raise ValueError(f"does not start with {CANONICAL_VERSION}")
    pos = len(head)
    out: dict[str, Any] = {}
    for name in CANONICAL_COLUMNS:
        prefix = f"{name}=".encode()
        if not data.startswith(prefix, pos):
            raise ValueError(f"expected the {name} line at byte {pos}")
        pos += len(prefix)
        if data.startswith(b"~\n", pos):
            out[name] = None
            pos += 2
            continue
        colon = data.find(b":", pos)
        length = data[pos:colon]
        if colon < 0 or not length.isdigit():
            raise ValueError(f"{name}: no length prefix")
        start, end = colon + 1, colon + 1 + int(length)
        if data[end:end + 1] != b"\n":
            raise ValueError(f"{name}: value is not {int(length)} bytes long")
        out[name] = _typed(name, data[start:end].decode("utf-8"))
        pos = end + 1
    if pos != len(data):
        raise ValueError("bytes after the last column")
    return out


def _typed(name: str, text: str) -> Any:
    if name == "id":
        return int(text)
    if name in _TIMESTAMPS:
        return (_EPOCH + timedelta(microseconds=int(text))).isoformat()
    if name in _JSONB:
        return json.loads(text)
    return text


# --------------------------------------------------------------------------- building


def receipt_events(
    evidence: Mapping[str, Any], event_id: int | None = None
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any] | None]]:
    """The events a receipt covers (one, or all of the number) and what each opt-out withdrew.

    An opt-out withdraws ("revoked") when the decision before it for the same organisation,
    purpose and channel was an opt-in (that event is named); otherwise it is a refusal
    ("denied"). Refuses an event whose chain proof does not verify: the organisation must
    not sign what its own ledger cannot vouch for.
    """
    events = list(evidence.get("events", []))
    chosen = [e for e in events if event_id is None or e["id"] == event_id]
    if not chosen:
        raise ReceiptError(f"no consent event {event_id} for {evidence.get('number')}"
                           if event_id is not None else
                           f"no consent event recorded for {evidence.get('number')}")
    for e in chosen:
        if e["chain"]["status"] != "verified":
            raise ReceiptError(
                f"event {e['id']} fails the ledger's hash chain (run `consent-ivr verify-ledger`);"
                " no receipt is signed for it")
    return chosen, {e["id"]: _withdrawn(e, events) for e in chosen}


def _order(e: Mapping[str, Any]) -> tuple[datetime, int]:
    return datetime.fromisoformat(e["decided_at"]), int(e["id"])


def _withdrawn(e: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if e["decision"] != "opt_in":
        key = (e["organisation"], e["purpose"], e["channel"])
        before = [o for o in events if (o["organisation"], o["purpose"], o["channel"]) == key
                  and _order(o) < _order(e)]
        if before:
            prev = max(before, key=_order)
            if prev["decision"] == "opt_in":
                return {"event_id": prev["id"], "hash": prev["chain"]["hash"]}
    return None


def make_vcon_uuid(fqhn: str, now: datetime, rand_a: int | None = None) -> str:
    """A version 8 UUID as vcon-core asks: a version 7 layout (48-bit Unix ms, 12 random
    bits) whose last 62 bits are the high 62 bits of SHA-1 of the host's domain name."""
    ms = int((now - _EPOCH) / timedelta(milliseconds=1)) & ((1 << 48) - 1)
    rand = (int.from_bytes(os.urandom(2), "big") if rand_a is None else rand_a) & 0xFFF
    tail = int.from_bytes(hashlib.sha1(fqhn.encode("utf-8")).digest()[:8], "big") >> 2  # noqa: S324 - the draft's hash, not security
    value = (ms << 80) | (0x8 << 76) | (rand << 64) | (0b10 << 62) | tail
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _prompts(e: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in e["prompts"]:
        heard_ms, length_ms = p.get("heard_ms"), p.get("length_ms")
        out.append({
            "id": p.get("id"), "lang": p.get("lang"), "text": p.get("text"),
            "sha256": p.get("sha256"), "interrupted": bool(p.get("interrupted")),
            "heard_ms": heard_ms, "length_ms": length_ms,
            # events recorded before lengths were kept: "unknown", never "yes"
            "heard_in_full": _yes_no(heard_in_full(bool(p.get("interrupted")), heard_ms,
                                                   length_ms)),
        })
    return out


def _keys(e: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"step": d.get("step"), "digit": d.get("digit"), "offset_ms": d.get("offset_ms"),
             "ignored": bool(d.get("ignored", False))} for d in e["digits"]]


def _at(start: str, offset_ms: int) -> str:
    return (datetime.fromisoformat(start) + timedelta(milliseconds=offset_ms)).isoformat()


def _transcript(e: Mapping[str, Any], prompts: list[dict[str, Any]],
                keys: list[dict[str, Any]]) -> str:
    lines = [f"consent-ivr record of call {e['uniqueid'] or '(no uniqueid)'}: what was played "
             "and pressed. No audio was recorded.", "Played, in order:"]
    for p in prompts:
        heard = (f"{p['heard_ms']} of {p['length_ms']} ms heard"
                 if p["heard_ms"] is not None and p["length_ms"] is not None else "length unknown")
        lines.append(f"  {p['id']} [{p['lang']}] heard in full: {p['heard_in_full']} "
                     f"({heard}{', interrupted' if p['interrupted'] else ''}): \"{p['text']}\"")
    lines.append("Pressed, by time from the start of the call:")
    for k in keys:
        note = " (ignored: pressed while a statement played)" if k["ignored"] else ""
        lines.append(f"  +{k['offset_ms']} ms  {k['digit']} at {k['step']}{note}")
    if not keys:
        lines.append("  nothing")
    lines.append(f"Decision: {e['decision']} for {e['purpose']} at {e['decided_at']}.")
    return "\n".join(lines) + "\n"


def _dialog(e: Mapping[str, Any], org: int) -> dict[str, Any]:
    prompts, keys = _prompts(e), _keys(e)
    start = e["call_started_at"] or e["decided_at"]
    dialog: dict[str, Any] = {
        "type": "text",
        "start": start,
        "parties": [0, org],
        "mediatype": "text/plain",
        "encoding": "none",
        "body": _transcript(e, prompts, keys),
        "application": "consent-ivr (Asterisk FastAGI)",
    }
    if e["call_started_at"]:
        dialog["duration"] = (datetime.fromisoformat(e["decided_at"])
                              - datetime.fromisoformat(start)).total_seconds()
        dialog["party_history"] = [
            {"party": 0, "time": _at(start, int(k["offset_ms"])), "event": "dtmfdown",
             "dtmf": k["digit"]} for k in keys]
    if "outbound" in (e["method"] or ""):
        dialog["originator"] = org  # we called them
    dialog["consent_ivr"] = {
        "audio_recorded": False,
        "event_id": e["id"],
        "method": e["method"],
        "evidence_strength": e["evidence_strength"],
        "uniqueid": e["uniqueid"], "linkedid": e["linkedid"], "channel_name": e["channel_name"],
        "callerid_num": e["callerid_num"], "callerid_name": e["callerid_name"],
        "prompts": prompts,
        "keys": keys,
    }
    return dialog


def _analysis(e: Mapping[str, Any], index: int) -> dict[str, Any]:
    prompts, keys = _prompts(e), _keys(e)
    # the rule status and evidence use: this purpose's statement, heard whole at least once
    whole = statement_heard(e["prompts"], e["purpose"])
    return {
        "type": "summary", "dialog": index, "vendor": "consent-ivr", "product": "consent-ivr",
        "schema": "consent-ivr.heard.v1", "mediatype": "application/json", "encoding": "json",
        "body": {
            "decision": e["decision"],
            "statement_heard_in_full": whole,
            "prompts": [{"id": p["id"], "lang": p["lang"], "heard_in_full": p["heard_in_full"]}
                        for p in prompts],
            "keys_acted_on": [k["digit"] for k in keys if not k["ignored"]],
            "keys_ignored": [k["digit"] for k in keys if k["ignored"]],
        },
    }


def _expiration(e: Mapping[str, Any], profile: Profile) -> str | None:
    """When the profile makes this consent lapse; ``None``: until withdrawn (the draft's null)."""
    if (e["decision"] == "opt_in" and e["captured_by"] == "third_party"
            and profile.third_party_max_age is not None):
        return (datetime.fromisoformat(e["recorded_at"]) + profile.third_party_max_age).isoformat()
    return None


def _attachment(e: Mapping[str, Any], dialog: int, profile: Profile,
                withdrew: Mapping[str, Any] | None,
                head: Mapping[str, Any]) -> dict[str, Any]:
    given = e["decision"] == "opt_in"
    status = "granted" if given else ("revoked" if withdrew else "denied")
    chain = e["chain"]
    attachment: dict[str, Any] = {
        "type": "consent",
        "version": CONSENT_DRAFT,
        "start": e["decided_at"],
        "party": 0,
        "dialog": dialog,
        "expiration": _expiration(e, profile),
        "consents": [{
            # §13 and §23.2 spell a consent "purpose"/"status", §20 "consent"/"value": both
            "purpose": e["purpose"], "status": status, "timestamp": e["decided_at"],
            "consent": e["purpose"], "value": given,
            "organisation": e["organisation"], "channel": e["channel"],
            "captured_by": e["captured_by"], "third_party_name": e["third_party_name"],
            "profile": profile.name,
            "legal_basis": profile.consent_rule if given else profile.opt_out_rule,
            "recorded_at": e["recorded_at"],
        }],
        "proof": [
            {"type": "dtmf_confirmation", "timestamp": e["decided_at"],
             "value": {"dialog": dialog, "party": 0,
                       "keys": [k for k in _keys(e) if not k["ignored"]]}},
            {"type": "ledger_hash_chain", "timestamp": e["recorded_at"],
             "value": {
                 "ledger": "consent-ivr consent_event",
                 "event_id": e["id"],
                 "chain_position": e["id"],
                 "algorithm": "sha256(prev_hash || canonical)",
                 "canonical_version": CANONICAL_VERSION,
                 "canonical": chain["canonical"],
                 "prev_hash": chain["prev_hash"],
                 "hash": chain["hash"],
                 "chain_status": chain["status"],
                 "chain_head": dict(head),
             }},
        ],
    }
    if withdrew:
        attachment["supersedes"] = dict(withdrew)
    return attachment


def build_vcon(events: Sequence[Mapping[str, Any]], *, chain_head: Mapping[str, Any],
               created_at: str, vcon_uuid: str, profile: Profile,
               withdrew: Mapping[int, Mapping[str, Any] | None]) -> dict[str, Any]:
    """The unsigned vCon of ``events`` (all of one number, in ledger order)."""
    number = events[0]["number_e164"]
    strengths = sorted({str(e["evidence_strength"]) for e in events})
    parties: list[dict[str, Any]] = [{"tel": f"tel:{number}", "validation": ", ".join(strengths)}]
    org_index: dict[str, int] = {}
    for e in events:
        if e["organisation"] not in org_index:
            org_index[e["organisation"]] = len(parties)
            parties.append({"name": e["organisation"], "validation": "none"})
    return {
        "vcon": VCON_SYNTAX,
        "uuid": vcon_uuid,
        "created_at": created_at,
        "updated_at": created_at,
        "subject": f"Consent receipt for tel:{number}",
        "extensions": ["consent", RECEIPT_EXTENSION],
        "parties": parties,
        "dialog": [_dialog(e, org_index[e["organisation"]]) for e in events],
        "analysis": [_analysis(e, i) for i, e in enumerate(events)],
        "attachments": [_attachment(e, i, profile, withdrew.get(e["id"]), chain_head)
                        for i, e in enumerate(events)],
    }


def chain_head_of(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The chain head as the evidence document saw it."""
    chain = evidence["chain"]
    return {"last_id": chain["last_id"], "hash": chain["head_hash"], "intact": chain["ok"],
            "events_checked": chain["checked"], "observed_at": evidence["generated_at"]}


# --------------------------------------------------------------------------- signing


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@contextlib.contextmanager
def _quiet_eddsa() -> Iterator[None]:
    # joserfc warns that RFC 9864 deprecates "EdDSA" for "Ed25519"; we sign "EdDSA" (what
    # verifiers support today, as the brief asks) and accept both (docs/receipts.md)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
        yield


def sign_vcon(vcon: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """The signed form: General JWS JSON Serialization of the vCon (vcon-core)."""
    payload = json.dumps(vcon, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # a list of members: the General serialization (one member alone would be Flattened)
    members = [cast(jws.HeaderDict, {
        "protected": {"alg": SIGN_ALG, "kid": key.kid, "cty": "application/vcon+json"},
        "header": {"x5c": [certificate_der_b64(key.certificate)], "uuid": vcon["uuid"]},
    })]
    okp = OKPKey.import_key(key.private_key)
    with _quiet_eddsa():
        signed = jws.serialize_json(members, payload, okp, algorithms=[SIGN_ALG],
                                    registry=_REGISTRY)
    return dict(signed)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class VerifyReport:
    """Every check made, in order; the receipt is valid when all passed."""

    checks: list[Check] = field(default_factory=list)
    vcon: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failure(self) -> str | None:
        """The first failed check, as one line naming what failed."""
        bad = next((c for c in self.checks if not c.ok), None)
        return None if bad is None else f"{bad.name}: {bad.detail}"

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok


def verify_receipt(text: str, keys: Mapping[str, Ed25519PublicKey], *,
                   key_source: str = "the keys directory",
                   now: datetime | None = None) -> VerifyReport:
    """Check a receipt offline. ``keys``: the public keys known, by the kid they are filed as.

    Stops at the first failure that leaves nothing to check. When the signature fails, the
    payload is still examined, so the report says whether its fields were edited (and which)
    or the signature (or signed header) was.
    """
    report = VerifyReport()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        stripped = text.strip()
        if exc.pos >= len(stripped) or (stripped.startswith("{") and not stripped.endswith("}")):
            report.add("file", False, f"the JSON ends early (line {exc.lineno}): the file is "
                       "truncated")
        else:
            report.add("file", False, f"not JSON ({exc.msg} at line {exc.lineno} column "
                       f"{exc.colno})")
        return report
    if not isinstance(doc, dict) or not isinstance(doc.get("payload"), str) or not (
            isinstance(doc.get("signatures"), list) and doc["signatures"]):
        unsigned = isinstance(doc, dict) and any(k in doc for k in ("parties", "dialog"))
        report.add("file", False, "an unsigned vCon, not a signed receipt" if unsigned else
                   "not a signed vCon: a JWS General JSON Serialization needs 'payload' and "
                   "'signatures'")
        return report
    sig = doc["signatures"][0]
    try:
        protected = json.loads(_unb64url(sig["protected"]))
        header = sig.get("header") or {}
        assert isinstance(protected, dict) and isinstance(header, dict)
        _unb64url(sig["signature"])
    except (KeyError, TypeError, ValueError, AssertionError, binascii.Error):
        report.add("file", False, "the signature object is malformed (protected header, "
                   "header or signature is not base64url JSON)")
        return report
    report.add("file", True, f"JWS General JSON Serialization, {len(doc['signatures'])} "
               "signature(s)")
    alg, kid = protected.get("alg"), protected.get("kid")
    if not report.add("algorithm", alg in ACCEPTED_ALGS,
                      f"{alg} (Ed25519)" if alg in ACCEPTED_ALGS else
                      f"the protected header names alg {alg!r}; receipts are signed EdDSA"):
        return report
    public = keys.get(kid) if isinstance(kid, str) else None
    if public is None:
        report.add("key", False, f"the receipt names key {kid!r}, which is not known "
                   f"({key_source}); pass the organisation's public key with --public-key")
        return report
    if kid_of(public) != kid:
        report.add("key", False, f"the public key filed as {kid} is another key (its "
                   f"thumbprint is {kid_of(public)}): the key file was replaced")
        return report
    report.add("key", True, f"{kid} ({key_source})")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0], validate=True))
        carries = cert.public_key() == public
        subject = cert.subject.rfc4514_string()
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        report.add("certificate", False, "no readable x5c certificate in the header")
        return report
    if not report.add("certificate", carries,
                      f"x5c carries key {kid} ({subject}; self-signed: trust comes from the kid)"
                      if carries else f"the x5c certificate carries another key than {kid}"):
        return report
    try:
        with _quiet_eddsa():
            jws.deserialize_json(cast(jws.GeneralJSONSerialization, doc),
                                 OKPKey.import_key(public),
                                 algorithms=list(ACCEPTED_ALGS), registry=_REGISTRY)
        signature_ok, signature_detail = True, f"verifies with key {kid}"
    except BadSignatureError:
        signature_ok, signature_detail = False, f"does not verify with key {kid}"
    except (JoseError, ValueError, TypeError) as exc:
        signature_ok, signature_detail = False, f"cannot be checked: {exc}"
    try:
        vcon = json.loads(_unb64url(doc["payload"]))
    except (ValueError, binascii.Error):
        report.add("signature", signature_ok, signature_detail)
        report.add("payload", False, "the payload is not base64url JSON")
        return report
    problems = list(_content_problems(vcon, header))
    if not signature_ok:
        cause = (f"the payload was edited: {problems[0]}" if problems else
                 "the payload agrees with its own ledger proof, so the signature bytes or the "
                 "signed header were altered")
        report.add("signature", False, f"{signature_detail}; {cause}")
        return report
    report.add("signature", True, signature_detail)
    report.vcon = vcon
    if not report.add("content", not problems, problems[0] if problems else
                      _content_summary(vcon)):
        return report
    for note in _notes(vcon, now or datetime.now(UTC)):
        report.notes.append(note)
    return report


def _content_summary(vcon: Mapping[str, Any]) -> str:
    atts = [a for a in vcon["attachments"] if a.get("type") == "consent"]
    ids = ", ".join(f"#{a['proof'][1]['value']['event_id']}" for a in atts)
    return (f"vCon {vcon['vcon']} {vcon['uuid']}: {len(vcon['parties'])} parties, "
            f"{len(vcon['dialog'])} dialog(s), {len(atts)} consent attachment(s); event hash of "
            f"{ids} recomputes from the embedded canonical form, and every field agrees with it")


def _notes(vcon: Mapping[str, Any], now: datetime) -> Iterator[str]:
    for a in vcon["attachments"]:
        if a.get("type") != "consent":
            continue
        c = a["consents"][0]
        exp = a["expiration"]
        if exp is None:
            when = "no expiry (valid until withdrawn)"
        elif datetime.fromisoformat(exp) + CLOCK_SKEW < now:
            when = f"EXPIRED at {exp}"
        else:
            when = f"expires {exp}"
        ledger = a["proof"][1]["value"]
        head = ledger["chain_head"]
        position = ("the chain head" if head["last_id"] == ledger["event_id"] else
                    f"followed by events up to #{head['last_id']} (compare the head hash with "
                    "`consent-ivr verify-ledger` or a published head)")
        yield (f"event #{ledger['event_id']}: {c['status']} for {c['purpose']} "
               f"({c['organisation']}) at {c['timestamp']}; {when}; ledger chain at export: "
               f"{'intact' if head['intact'] else 'BROKEN'}, {position}")


def _content_problems(vcon: Any, header: Mapping[str, Any]) -> Iterator[str]:
    """What is wrong with the vCon, first the shape, then each field against the ledger."""
    if not isinstance(vcon, dict):
        yield "the payload is not a JSON object"
        return
    for key, kind in (("vcon", str), ("uuid", str), ("created_at", str), ("parties", list),
                      ("dialog", list), ("analysis", list), ("attachments", list)):
        if not isinstance(vcon.get(key), kind):
            yield f"the vCon lacks {key!r}"
            return
    if vcon["vcon"] != VCON_SYNTAX:
        yield f"vcon syntax {vcon['vcon']!r}, expected {VCON_SYNTAX}"
        return
    if header.get("uuid") != vcon["uuid"]:
        yield f"the header's uuid {header.get('uuid')!r} is not the vCon's {vcon['uuid']!r}"
        return
    consents = [a for a in vcon["attachments"]
                if isinstance(a, dict) and a.get("type") == "consent"]
    if not consents:
        yield "the vCon has no consent attachment"
        return
    events: list[dict[str, Any]] = []
    withdrew: dict[int, Mapping[str, Any] | None] = {}
    head: Mapping[str, Any] | None = None
    profile: Profile | None = None
    for i, a in enumerate(consents):
        where = f"attachments[{i}]"
        missing = [k for k in ("expiration", "party", "dialog", "consents") if k not in a]
        if missing:
            yield f"{where} lacks the consent attachment's {', '.join(missing)}"
            return
        if not (isinstance(a["party"], int) and 0 <= a["party"] < len(vcon["parties"])):
            yield f"{where}.party {a['party']!r} is not a party of the vCon"
            return
        if not (isinstance(a["dialog"], int) and 0 <= a["dialog"] < len(vcon["dialog"])):
            yield f"{where}.dialog {a['dialog']!r} is not a dialog of the vCon"
            return
        try:
            ledger = next(p["value"] for p in a["proof"] if p.get("type") == "ledger_hash_chain")
            text, prev, digest = ledger["canonical"], ledger["prev_hash"], ledger["hash"]
            row = parse_canonical(text)
            recomputed = hashlib.sha256(bytes.fromhex(prev) + text.encode("utf-8")).hexdigest()
            profile = get_profile(a["consents"][0]["profile"])
        except (StopIteration, KeyError, TypeError, IndexError, AttributeError) as exc:
            yield f"{where} has no readable ledger proof ({exc!r})"
            return
        except UnknownProfileError as exc:
            yield f"{where}: {exc}"
            return
        except ValueError as exc:
            yield f"{where}: the embedded canonical form is malformed: {exc}"
            return
        if recomputed != digest:
            yield (f"{where}: the event hash does not recompute from the embedded canonical form "
                   f"(sha256(prev_hash || canonical) = {recomputed}, the receipt says {digest})")
            return
        if canonical(row) != text:
            yield f"{where}: the embedded canonical form is not in canonical encoding"
            return
        if ledger.get("chain_status") != "verified":
            yield f"{where}: the ledger did not verify event {row['id']} when it was exported"
            return
        head = head or ledger.get("chain_head")
        if isinstance(head, Mapping) and head.get("last_id") == row["id"] and \
                head.get("hash") != digest:
            yield f"{where}: the chain head names event {row['id']} with another hash"
            return
        row["chain"] = {"canonical": text, "prev_hash": prev, "hash": digest,
                        "status": ledger["chain_status"]}
        events.append(row)
        withdrew[row["id"]] = a.get("supersedes")
    if len({e["number_e164"] for e in events}) != 1:
        yield "the consent attachments are about different numbers"
        return
    assert profile is not None and isinstance(head, Mapping)
    expected = build_vcon(events, chain_head=head, created_at=vcon["created_at"],
                          vcon_uuid=vcon["uuid"], profile=profile, withdrew=withdrew)
    expected["updated_at"] = vcon.get("updated_at")
    for path, got, want in _differences(vcon, expected, ""):
        yield f"{path or 'the vCon'} is {_short(got)}, the ledger record gives {_short(want)}"
        return


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


_MISSING: Final = object()


def _differences(got: Any, want: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(got, dict) and isinstance(want, dict):
        for key in list(want) + [k for k in got if k not in want]:
            g, w = got.get(key, _MISSING), want.get(key, _MISSING)
            sub = f"{path}.{key}" if path else key
            if g is _MISSING:
                yield sub, "(absent)", w
            elif w is _MISSING:
                yield sub, g, "(absent)"
            else:
                yield from _differences(g, w, sub)
    elif isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            yield f"{path} (length)", len(got), len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=False)):
            yield from _differences(g, w, f"{path}[{i}]")
    elif got != want or type(got) is not type(want):
        yield path, got, want


def render_verify(report: VerifyReport, name: str) -> str:
    """The report as lines for a person: one per check, then what the receipt says."""
    lines = [f"receipt {name}: {'VALID' if report.ok else 'INVALID'}"]
    for c in report.checks:
        lines.append(f"  {'✓' if c.ok else '✗'} {c.name}: {c.detail}")
    for note in report.notes:
        lines.append(f"  · {note}")
    return "\n".join(lines) + "\n"



def receipt_for(evidence: Mapping[str, Any], key: SigningKey, *, event_id: int | None = None,
                profile: Profile | None = None, fqhn: str = "localhost",
                now: datetime | None = None) -> dict[str, Any]:
    """The signed receipt of one event (or every event) of an evidence document."""
    events, withdrew = receipt_events(evidence, event_id)
    created = now or datetime.now(UTC)
    vcon = build_vcon(events, chain_head=chain_head_of(evidence), created_at=created.isoformat(),
                      vcon_uuid=make_vcon_uuid(fqhn, created), profile=profile or get_profile(),
                      withdrew=withdrew)
    return sign_vcon(vcon, key)
