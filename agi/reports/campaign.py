"""Campaign compliance report: what a compliance officer hands to a regulator.

:func:`build_report` reads one campaign's records straight from the ledger tables
(``campaign``, ``contact``, ``dial_attempt``, ``marketing_play``, ``marketing_refused``,
``consent_event``) with set-based SQL and returns a plain :class:`CampaignReport`;
:func:`render_html` turns it into one self-contained page (inline CSS, charts as inline
SVG, no script, no external asset) and :meth:`CampaignReport.to_json` into JSON.

The report re-checks instead of trusting the service's own bookkeeping:

* **played without a valid opt-in** counts every playback that was not blocked and whose
  consent either the database flagged as unverified at play time, or that fails an
  independent, time-bounded re-check here (the referenced event is an opt-in for this
  number, organisation and purpose on the automated channel, recorded before the call
  started, with no later opt-out or do-not-call entry before the audio began);
* **calling hours** recomputes, for every dialled attempt, the callee's local time in
  each of the number's zones against the profile's statutory window and the campaign's
  own window (the most restrictive reading, as the gate does);
* the **ledger hash chain** is walked by the reliability verifier (:mod:`agi.ledger.chain`).

Days are calendar days in ``tz`` (default UTC), stated on the page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from agi.reports.html import CSS, card, esc

__all__ = [
    "CampaignReport",
    "DayFunnel",
    "ReportError",
    "build_report",
    "render_html",
]

FUNNEL_STAGES: tuple[tuple[str, str], ...] = (
    ("contacts", "Contacts considered"),
    ("allowed", "Allowed by the gate"),
    ("dialled", "Dialled"),
    ("answered", "Answered"),
    ("played", "Marketing played"),
    ("opted_out", "Opted out"),
)


class ReportError(Exception):
    """The campaign does not exist or the period is invalid."""


@dataclass(frozen=True, slots=True)
class DayFunnel:
    """One calendar day of the funnel."""

    day: date
    contacts: int = 0
    allowed: int = 0
    dialled: int = 0
    answered: int = 0
    played: int = 0
    opted_out: int = 0
    refused: int = 0


@dataclass(slots=True)
class CampaignReport:
    """Everything on the page, as plain data (also the ``--json`` output)."""

    campaign: dict[str, Any]
    period_from: datetime
    period_to: datetime
    tz: str
    generated_at: datetime
    contacts_on_list: int
    days: list[DayFunnel]
    totals: DayFunnel
    gate_refusals: dict[str, int]
    playback_refusals: dict[str, int]
    calling_hours: dict[str, Any]
    played_without_consent: int
    played_without_consent_detail: dict[str, int]
    chain: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def opt_out_rate(self) -> float | None:
        return self.totals.opted_out / self.totals.played if self.totals.played else None

    @property
    def compliant(self) -> bool:
        return (
            self.played_without_consent == 0
            and self.calling_hours.get("outside", 0) == 0
            and self.chain.get("status") == "verified"
        )

    def to_json(self) -> dict[str, Any]:
        def day(d: DayFunnel) -> dict[str, Any]:
            out = asdict(d)
            out["day"] = d.day.isoformat()
            return out

        return {
            "campaign": self.campaign,
            "period": {"from": self.period_from.isoformat(), "to": self.period_to.isoformat(),
                       "tz": self.tz},
            "generated_at": self.generated_at.isoformat(),
            "contacts_on_list": self.contacts_on_list,
            "funnel_by_day": [day(d) for d in self.days],
            "totals": {k: v for k, v in day(self.totals).items() if k != "day"},
            "opt_out_rate": self.opt_out_rate,
            "gate_refusals": self.gate_refusals,
            "playback_refusals": self.playback_refusals,
            "calling_hours": self.calling_hours,
            "marketing_played_without_consent": self.played_without_consent,
            "marketing_played_without_consent_detail": self.played_without_consent_detail,
            "ledger_chain": self.chain,
            "compliant": self.compliant,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- queries

_CAMPAIGN = """
    SELECT id, name, organisation, purpose, profile, status, halted_at, halt_reason,
           window_start, window_end, caller_id, created_at
      FROM campaign WHERE name = $1 OR ($2::bigint IS NOT NULL AND id = $2)
     ORDER BY (name = $1) DESC LIMIT 1"""

# Gate decisions and the calls they led to, per day of the decision.
_ATTEMPTS_BY_DAY = """
    SELECT (a.decided_at AT TIME ZONE $4)::date AS day,
           count(DISTINCT a.contact_id)                                    AS contacts,
           count(*) FILTER (WHERE a.allowed)                                AS allowed,
           count(*) FILTER (WHERE a.allowed AND (a.action_id IS NOT NULL
                                  OR a.state <> 'originating'))             AS dialled,
           count(*) FILTER (WHERE a.answered_at IS NOT NULL
                                  OR a.state IN ('answered', 'completed')) AS answered,
           count(*) FILTER (WHERE NOT a.allowed)                            AS refused
      FROM dial_attempt a
     WHERE a.campaign_id = $1 AND a.decided_at >= $2 AND a.decided_at < $3
     GROUP BY 1"""

_PLAYS_BY_DAY = """
    SELECT (p.started_at AT TIME ZONE $4)::date AS day,
           count(*) FILTER (WHERE p.status <> 'blocked')   AS played,
           count(*) FILTER (WHERE p.status = 'opted_out')  AS opted_out
      FROM marketing_play p
     WHERE p.campaign_id = $1 AND p.started_at >= $2 AND p.started_at < $3
     GROUP BY 1"""

_GATE_REFUSALS = """
    SELECT reason, count(*) AS n FROM dial_attempt
     WHERE campaign_id = $1 AND NOT allowed AND decided_at >= $2 AND decided_at < $3
     GROUP BY reason ORDER BY n DESC, reason"""

_PLAYBACK_REFUSALS = """
    SELECT reason, count(*) AS n FROM marketing_refused
     WHERE campaign_id = $1 AND recorded_at >= $2 AND recorded_at < $3
     GROUP BY reason ORDER BY n DESC, reason"""

# Every playback whose consent does not hold: flagged by the database at play time, or
# failing this independent, time-bounded re-check.
_UNCONSENTED = """
    SELECT count(*) FILTER (WHERE NOT p.consent_verified)           AS flagged,
           count(*) FILTER (WHERE NOT coalesce(chk.ok, false))      AS recheck_failed,
           count(*) FILTER (WHERE NOT p.consent_verified
                               OR NOT coalesce(chk.ok, false))      AS total,
           count(*)                                                 AS plays
      FROM marketing_play p
      JOIN campaign c ON c.id = p.campaign_id
      LEFT JOIN LATERAL (
        SELECT e.decision = 'opt_in' AND e.channel = 'automated_call'
               AND e.number_e164 = p.number_e164 AND e.organisation = c.organisation
               AND e.purpose = c.purpose AND e.recorded_at < p.call_started_at
               AND NOT EXISTS (
                   SELECT 1 FROM consent_event o
                    WHERE o.number_e164 = p.number_e164 AND o.organisation = c.organisation
                      AND o.decision = 'opt_out' AND o.recorded_at <= p.started_at
                      AND (o.decided_at, o.id) > (e.decided_at, e.id))
               AND NOT EXISTS (
                   SELECT 1 FROM do_not_call d
                    WHERE d.number_e164 = p.number_e164 AND d.organisation = c.organisation
                      AND d.created_at <= p.started_at)
               AS ok
          FROM consent_event e WHERE e.id = p.consent_event_id) chk ON true
     WHERE p.campaign_id = $1 AND p.status <> 'blocked'
       AND p.started_at >= $2 AND p.started_at < $3"""

# Local time of every dialled attempt in each of the callee's zones, against the windows.
_CALLING_HOURS = """
    WITH dialled AS (
        SELECT a.id, a.decided_at, c.time_zones
          FROM dial_attempt a JOIN contact c ON c.id = a.contact_id
         WHERE a.campaign_id = $1 AND a.allowed
           AND a.decided_at >= $2 AND a.decided_at < $3),
    judged AS (
        SELECT d.id,
               ($4::time IS NULL AND $6::time IS NULL)
               OR (cardinality(d.time_zones) > 0 AND NOT EXISTS (
                   SELECT 1 FROM unnest(d.time_zones) AS z(zone)
                    WHERE NOT (
                        ($4::time IS NULL OR ((d.decided_at AT TIME ZONE z.zone)::time >= $4
                                          AND (d.decided_at AT TIME ZONE z.zone)::time < $5))
                        AND ($6::time IS NULL OR ((d.decided_at AT TIME ZONE z.zone)::time >= $6
                                          AND (d.decided_at AT TIME ZONE z.zone)::time < $7)))
               )) AS inside
          FROM dialled d)
    SELECT count(*) AS dialled, count(*) FILTER (WHERE NOT inside) AS outside FROM judged"""


async def build_report(
    conn: asyncpg.Connection | asyncpg.Pool,
    campaign: str,
    *,
    period_from: date | None = None,
    period_to: date | None = None,
    tz: str = "UTC",
    verify_chain: bool = True,
) -> CampaignReport:
    """Read one campaign's records for ``[period_from, period_to]`` (whole days in ``tz``)."""
    zone = ZoneInfo(tz)
    ident = int(campaign) if campaign.isdigit() else None
    row = await conn.fetchrow(_CAMPAIGN, campaign, ident)
    if row is None:
        raise ReportError(f"no campaign named {campaign!r}")
    info = dict(row)
    now = await conn.fetchval("SELECT clock_timestamp()")
    first_day = period_from or info["created_at"].astimezone(zone).date()
    last_day = period_to or now.astimezone(zone).date()
    if last_day < first_day:
        raise ReportError(f"--to {last_day} is before --from {first_day}")
    start = datetime.combine(first_day, time(0), zone)
    end = datetime.combine(last_day + timedelta(days=1), time(0), zone)
    cid = info["id"]

    days: dict[date, dict[str, int]] = {}
    for r in await conn.fetch(_ATTEMPTS_BY_DAY, cid, start, end, tz):
        days.setdefault(r["day"], {}).update({k: int(r[k]) for k in
                                               ("contacts", "allowed", "dialled", "answered",
                                                "refused")})
    for r in await conn.fetch(_PLAYS_BY_DAY, cid, start, end, tz):
        days.setdefault(r["day"], {}).update(played=int(r["played"]),
                                             opted_out=int(r["opted_out"]))
    funnel = [DayFunnel(day=d, **days[d]) for d in sorted(days)]
    totals = DayFunnel(
        day=first_day,
        **{k: sum(getattr(d, k) for d in funnel) for k in
           ("contacts", "allowed", "dialled", "answered", "played", "opted_out", "refused")},
    )

    from agi.outbound.policy import UnknownProfileError, get_profile

    notes: list[str] = []
    try:
        window = get_profile(info["profile"]).calling_window
    except UnknownProfileError:
        window = (time(0), time(0))  # an unknown profile permits nothing: all count as outside
        notes.append(f"unknown profile {info['profile']!r}: every dialled call counted outside")
    hours = await conn.fetchrow(
        _CALLING_HOURS, cid, start, end,
        window[0] if window else None, window[1] if window else None,
        info["window_start"], info["window_end"],
    )
    assert hours is not None
    uncon = await conn.fetchrow(_UNCONSENTED, cid, start, end)
    assert uncon is not None

    return CampaignReport(
        campaign={
            "id": cid, "name": info["name"], "organisation": info["organisation"],
            "purpose": info["purpose"], "profile": info["profile"], "status": info["status"],
            "halted_at": info["halted_at"].isoformat() if info["halted_at"] else None,
            "halt_reason": info["halt_reason"], "caller_id": info["caller_id"],
            "window": (f"{info['window_start']:%H:%M}-{info['window_end']:%H:%M}"
                       if info["window_start"] else None),
        },
        period_from=start,
        period_to=end,
        tz=tz,
        generated_at=now,
        contacts_on_list=int(await conn.fetchval(
            "SELECT count(*) FROM contact WHERE campaign_id = $1", cid)),
        days=funnel,
        totals=totals,
        gate_refusals={r["reason"]: int(r["n"]) for r in
                       await conn.fetch(_GATE_REFUSALS, cid, start, end)},
        playback_refusals={r["reason"]: int(r["n"]) for r in
                           await conn.fetch(_PLAYBACK_REFUSALS, cid, start, end)},
        calling_hours={
            "dialled": int(hours["dialled"]), "outside": int(hours["outside"]),
            "statutory_window": (f"{window[0]:%H:%M}-{window[1]:%H:%M}" if window else None),
            "campaign_window": (f"{info['window_start']:%H:%M}-{info['window_end']:%H:%M}"
                                if info["window_start"] else None),
        },
        played_without_consent=int(uncon["total"]),
        played_without_consent_detail={
            "plays_checked": int(uncon["plays"]),
            "flagged_unverified_at_play_time": int(uncon["flagged"]),
            "failed_independent_recheck": int(uncon["recheck_failed"]),
        },
        chain=await _chain_status(conn) if verify_chain else {"status": "not checked"},
        notes=notes,
    )


async def _chain_status(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, Any]:
    """The reliability verifier's verdict on the whole ledger, or why there is none."""
    try:
        from agi.ledger.chain import verify_chain
    except ImportError:
        return {"status": "not available", "detail": "the hash-chain verifier is not installed"}
    try:
        report = await verify_chain(conn)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        return {"status": "not available", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    out = report.to_json()
    out["status"] = "verified" if report.ok else "broken"
    return out


# --------------------------------------------------------------------------- HTML

_COLOURS = ("#3559a8", "#3f8fd2", "#41a6a0", "#7fbf5a", "#f0a030", "#d9534f")


def _bars_svg(items: list[tuple[str, int]], *, width: int = 1000, colour: str = "#3559a8",
              colours: tuple[str, ...] | None = None) -> str:
    """Horizontal bar chart (one bar per item), as inline SVG."""
    if not items:
        return '<p class="sub">none</p>'
    bar, gap, label_w = 22, 8, 230
    height = len(items) * (bar + gap) + gap
    top = max(v for _, v in items) or 1
    span = width - label_w - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" style="max-width:100%;height:auto">']
    for i, (label, v) in enumerate(items):
        y = gap + i * (bar + gap)
        w = max(int(span * v / top), 1 if v else 0)
        fill = colours[i % len(colours)] if colours else colour
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" font-size="13" '
            f'fill="#1d2430">{esc(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar}" rx="3" fill="{fill}"/>'
            f'<text x="{label_w + w + 6}" y="{y + 16}" font-size="13" fill="#1d2430">{v}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _days_svg(days: list[DayFunnel], *, width: int = 1000, height: int = 280) -> str:
    """Grouped bars per day: each funnel stage, side by side, with a legend."""
    if not days:
        return '<p class="sub">no activity in this period</p>'
    left, bottom, top_pad = 48, 40, 34
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max(max(getattr(d, k) for k, _ in FUNNEL_STAGES) for d in days) or 1
    group = plot_w / len(days)
    bar = max(min(group * 0.8 / len(FUNNEL_STAGES), 28), 1.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" style="max-width:100%;height:auto">']
    for i, (_, title) in enumerate(FUNNEL_STAGES):  # legend
        x = left + i * 150
        parts.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{_COLOURS[i]}"/>'
                     f'<text x="{x + 16}" y="17" font-size="12">{esc(title)}</text>')
    for t in range(5):  # grid
        v = top * t / 4
        y = top_pad + plot_h - plot_h * t / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e6e9ef"/><text x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#5b6577">{v:.0f}</text>')
    for g, d in enumerate(days):
        x0 = left + g * group + (group - bar * len(FUNNEL_STAGES)) / 2
        for i, (key, _) in enumerate(FUNNEL_STAGES):
            v = getattr(d, key)
            h = plot_h * v / top
            parts.append(f'<rect x="{x0 + i * bar:.1f}" y="{top_pad + plot_h - h:.1f}" '
                         f'width="{bar - 1:.1f}" height="{h:.1f}" fill="{_COLOURS[i]}"/>')
        parts.append(f'<text x="{left + g * group + group / 2:.1f}" y="{height - 18}" '
                     f'font-size="11" text-anchor="middle" fill="#5b6577">'
                     f'{d.day:%d %b}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: CampaignReport) -> str:
    """One self-contained page: inline CSS and SVG, no script, no external reference."""
    c = report.campaign
    t = report.totals
    rate = report.opt_out_rate
    ch = report.calling_hours
    chain = report.chain
    chain_cls = {"verified": "ok", "broken": "bad"}.get(str(chain.get("status")), "warn")
    zero_cls = "ok" if report.played_without_consent == 0 else "bad"
    hours_cls = "ok" if ch["outside"] == 0 else "bad"
    period = (f"{report.period_from:%Y-%m-%d} to "
              f"{report.period_to - timedelta(days=1):%Y-%m-%d} ({report.tz})")
    rows = "".join(
        "<tr><td>{}</td>{}</tr>".format(
            f"{d.day:%a %d %b %Y}",
            "".join(f"<td>{getattr(d, k)}</td>" for k, _ in FUNNEL_STAGES)
            + f"<td>{d.refused}</td>")
        for d in report.days
    )
    total_row = "<tr><th>Total</th>{}<th>{}</th></tr>".format(
        "".join(f"<th>{getattr(t, k)}</th>" for k, _ in FUNNEL_STAGES), t.refused)
    chain_text = {
        "verified": f"verified: {chain.get('checked', 0)} events, head "
                    f"{str(chain.get('head_hash') or '')[:16]}…",
        "broken": "BROKEN at event {}: {}".format(
            (chain.get("first_break") or {}).get("id"),
            (chain.get("first_break") or {}).get("detail")),
    }.get(str(chain.get("status")), str(chain.get("status")) + (
        f" ({chain['detail']})" if chain.get("detail") else ""))
    reasons = [(r, n) for r, n in report.gate_refusals.items()]
    play_reasons = [(r, n) for r, n in report.playback_refusals.items()]
    verdict = "No breach found" if report.compliant else "ATTENTION: see the red items"
    halted = (f"<p><b>Halted</b> at {esc(c['halted_at'])}: {esc(c['halt_reason'])}</p>"
              if c.get("halted_at") else "")
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    detail = report.played_without_consent_detail
    zero = report.played_without_consent
    rate_text = f"{rate:.2%}" if rate is not None else "n/a"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Compliance report: {esc(c['name'])}</title><style>{CSS}</style></head>
<body><main>
<h1>Campaign compliance report: {esc(c['name'])}</h1>
<p class="sub">{esc(c['organisation'])} · purpose <b>{esc(c['purpose'])}</b> · profile
<b>{esc(c['profile'])}</b> · status <b>{esc(c['status'])}</b> · period {esc(period)} ·
generated {report.generated_at:%Y-%m-%d %H:%M:%S %Z}</p>{halted}
<div class="cards">
{card("Marketing played without a valid opt-in (must be 0)", zero, zero_cls)}
{card("Calls outside calling hours", f"{ch['outside']} / {ch['dialled']}", hours_cls)}
{card("Ledger hash chain", str(chain.get("status", "?")), chain_cls)}
{card("Verdict", verdict, "ok" if report.compliant else "bad")}
{card("Contacts on the list", report.contacts_on_list)}
{card("Marketing played", t.played)}
{card("Opted out during the call", t.opted_out)}
{card("Opt-out rate", f"{rate:.1%}" if rate is not None else "n/a")}
</div>
<h2>Funnel (period total)</h2>
<div class="panel">{_bars_svg([(title, getattr(t, k)) for k, title in FUNNEL_STAGES],
                               colours=_COLOURS)}</div>
<h2>Funnel per day</h2>
<div class="panel">{_days_svg(report.days)}</div>
<table><tr><th>Day</th>{"".join(f"<th>{esc(title)}</th>" for _, title in FUNNEL_STAGES)}
<th>Refused by the gate</th></tr>{rows}{total_row}</table>
<h2>Refusals by reason: the gate, before dialling</h2>
<div class="panel">{_bars_svg(reasons, colour="#d9534f")}</div>
<h2>Refusals by reason: at playback (re-checked during the call)</h2>
<div class="panel">{_bars_svg(play_reasons, colour="#f0a030")}</div>
<h2>Compliance checks</h2>
<table>
<tr><th>Check</th><th>Result</th></tr>
<tr><td>Marketing audio played without a valid opt-in</td><td>{report.played_without_consent}
 (of {detail['plays_checked']} plays: {detail['flagged_unverified_at_play_time']} flagged at
 play time, {detail['failed_independent_recheck']} failing this report's re-check)</td></tr>
<tr><td>Calling hours (statutory {esc(ch['statutory_window'] or 'none')}, campaign
 {esc(ch['campaign_window'] or 'none')}, callee's local time, every zone of the number)</td>
 <td>{ch['outside']} of {ch['dialled']} dialled calls outside</td></tr>
<tr><td>Ledger hash chain</td><td class="mono">{esc(chain_text)}</td></tr>
<tr><td>Opt-out rate (opted out ÷ played)</td><td>{rate_text}</td></tr>
</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<footer>consent-ivr report · campaign id {c['id']} · caller ID presented {esc(c['caller_id'])} ·
calendar days in {esc(report.tz)}. Every figure is read from the ledger tables at generation
time; the JSON form (<span class="mono">consent-ivr report {esc(c['name'])} --json</span>) carries
the same numbers.</footer>
</main></body></html>
"""


