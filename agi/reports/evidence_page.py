"""The evidence page: one number's evidence document (:func:`agi.ledger.evidence.build_evidence`) as
a page a person can read — every decision with what the caller heard and pressed, and its chain
proof. Self-contained like the campaign report; every value, including caller-controlled text
such as the caller ID name, is HTML-escaped.
"""

from __future__ import annotations

from typing import Any

from agi.reports.html import CSS, card, esc, kv_table

__all__ = ["render_evidence_html"]


def render_evidence_html(ev: dict[str, Any]) -> str:
    """The evidence document of :func:`agi.ledger.evidence.build_evidence` as a readable page.

    Self-contained like the campaign report. Every value, including caller-controlled
    text such as the caller ID name, is HTML-escaped.
    """
    chain_card, chain_text = _chain_summary(ev.get("chain") or {})
    states = "".join(
        f"<tr><td>{esc(s['purpose'])}</td><td>{esc(s['organisation'])}</td>"
        f"<td>{esc(s['channel'])}</td><td><b>{esc(s['state'])}</b></td>"
        f"<td>#{esc(s['event_id'])}</td><td>{esc(s['decided_at'])}</td></tr>"
        for s in ev.get("state", [])
    ) or '<tr><td colspan="6">no consent event recorded for this number</td></tr>'
    current = next(iter(ev.get("state", [])), None)
    state_cls = "ok" if current and current["state"] == "opted_in" else ""
    events = [_event_section(e) for e in ev.get("events", [])]
    attempts = "".join(
        f"<tr><td>#{esc(a.get('id'))}</td><td>{esc(a.get('recorded_at'))}</td>"
        f"<td>{esc(a.get('outcome'))}</td><td>{esc(a.get('reason'))}</td>"
        f"<td>{esc(a.get('route'))}</td><td>{esc(a.get('uniqueid'))}</td></tr>"
        for a in ev.get("attempts", [])
    )
    sessions = "".join(
        f"<tr><td>{esc(s.get('started_at'))}</td><td>{esc(s.get('state'))}</td>"
        f"<td>{esc(s.get('outcome'))}</td><td>{esc(s.get('route'))}</td>"
        f"<td>{esc(s.get('uniqueid'))}</td></tr>"
        for s in ev.get("call_sessions", [])
    )
    ids = ev.get("call_ids", {})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Consent evidence: {esc(ev.get('number'))}</title><style>{CSS}
td.l,th.l{{text-align:left}}pre{{white-space:pre-wrap;background:#f4f6f9;padding:8px;
border-radius:6px}}h3{{font-size:15px;margin:22px 0 8px}}
.card-inline{{padding:1px 8px;border-radius:4px;color:#fff;background:#98a2b3}}
.card-inline.ok{{background:#1f9d55}}.card-inline.bad{{background:#d92d20}}</style></head>
<body><main>
<h1>Consent evidence for {esc(ev.get('number'))}</h1>
<p class="sub">Generated {esc(ev.get('generated_at'))} from the consent ledger ·
format {esc(ev.get('format'))}</p>
<div class="cards">
{card("Current state", current["state"] if current else "no record", state_cls)}
{card("Consent events", len(ev.get("events", [])))}
{card("Calls without a decision", len(ev.get("attempts", [])))}
{chain_card}
</div>
<h2>Current consent</h2>
<table><tr><th>Purpose</th><th>Organisation</th><th>Channel</th><th>State</th><th>Event</th>
<th>Since</th></tr>{states}</table>
<h2>Ledger integrity</h2><p class="mono">{esc(chain_text)}</p>
<h2>Every decision, with what the caller heard and pressed</h2>
{"".join(events) or '<p class="sub">none</p>'}
<h2>Calls that ended without a decision (never consent)</h2>
{f'<table><tr><th>Id</th><th>When</th><th>Outcome</th><th>Reason</th><th>Route</th>'
 f'<th>Uniqueid</th></tr>{attempts}</table>' if attempts else '<p class="sub">none</p>'}
{f'<h2>Call sessions</h2><table><tr><th>Started</th><th>State</th><th>Outcome</th>'
 f'<th>Route</th><th>Uniqueid</th></tr>{sessions}</table>' if sessions else ''}
<h2>Call identifiers</h2>
{kv_table([(k, ", ".join(v) or "—") for k, v in ids.items()])}
<footer>consent-ivr evidence export. The JSON form (<span class="mono">consent-ivr evidence
NUMBER --json</span>) carries the same data; each event's hash can be recomputed by hand as
sha256(prev_hash bytes followed by the UTF-8 canonical form shown).</footer>
</main></body></html>
"""


def _chain_summary(chain: dict[str, Any]) -> tuple[str, str]:
    """The walk's verdict on the ledger hash chain: a summary card and one line of text."""
    if chain.get("ok"):
        return (card("Ledger hash chain", "intact", "ok"),
                f"intact: {chain.get('checked')} event(s) verified; chain head "
                f"{chain.get('head_hash')}")
    brk = chain.get("first_break") or {}
    return (card("Ledger hash chain", "BROKEN", "bad"),
            f"BROKEN at event {brk.get('id')} ({brk.get('kind')}): {brk.get('detail')}")


def _event_section(e: dict[str, Any]) -> str:
    """One decision: its facts, what the caller heard and pressed, and its chain proof."""
    c = e.get("chain", {})
    heard = "".join(
        f"<tr><td>{esc(p.get('id'))} [{esc(p.get('lang'))}]"
        f"{' (interrupted)' if p.get('interrupted') else ''}</td>"
        f"<td class=\"l\">“{esc(p.get('text'))}”<br>"
        f"<span class=\"mono\">sha256 {esc(p.get('sha256'))}</span></td></tr>"
        for p in e.get("prompts", [])
    ) or '<tr><td colspan="2">none recorded</td></tr>'
    pressed = ", ".join(
        f"{esc(d.get('digit'))} at {esc(d.get('step'))} (+{esc(d.get('offset_ms'))} ms)"
        for d in e.get("digits", [])
    ) or "none"
    cls = "ok" if c.get("status") == "verified" else "bad"
    return f"""
<h3>Event #{esc(e['id'])}: {esc(e['decision'])} for {esc(e['purpose'])}</h3>
<div class="panel">
{kv_table([
    ("Decided (caller's key press)", e.get("decided_at")),
    ("Recorded by the ledger (database clock)", e.get("recorded_at")),
    ("Organisation", e.get("organisation")), ("Channel", e.get("channel")),
    ("Method", e.get("method")), ("Evidence of the number", e.get("evidence_strength")),
    ("Captured by", e.get("captured_by")), ("Caller ID number (as received)",
                                            e.get("callerid_num")),
    ("Caller ID name (as received)", e.get("callerid_name")),
    ("Call uniqueid / linkedid", f"{e.get('uniqueid')} / {e.get('linkedid')}"),
    ("Channel name", e.get("channel_name")), ("Keys pressed", pressed),
    ("Source / server instance", f"{e.get('source')} / {e.get('instance')}"),
])}
<p><b>What the caller heard</b></p>
<table><tr><th>Prompt</th><th class="l">Exact words and audio hash</th></tr>{heard}</table>
<p><b>Chain proof</b>: <span class="card-inline {cls}">{esc(c.get('status'))}</span>
 — hash = sha256(prev_hash ‖ canonical form); recomputes:
 {esc(c.get('hash_recomputes'))}</p>
<p class="mono">prev_hash {esc(c.get('prev_hash'))}<br>hash&nbsp;&nbsp;&nbsp;&nbsp;&nbsp;
{esc(c.get('hash'))}</p>
<pre class="mono">{esc(c.get('canonical'))}</pre>
</div>"""
