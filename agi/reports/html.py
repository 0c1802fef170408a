"""The HTML both report pages share: one stylesheet, escaping, a summary card, a key/value table.

Pages are self-contained (inline CSS, no script, no external asset); every value is escaped.
"""

from __future__ import annotations

import html

__all__ = ["CSS", "card", "esc", "kv_table"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;
     margin:0;background:#f4f6f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;color:#243b6b}
.sub{color:#5b6577;margin:0 0 18px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.card{background:#fff;border-radius:8px;padding:14px 16px;border-left:6px solid #98a2b3;
      box-shadow:0 1px 2px rgba(0,0,0,.06)}
.card .v{font-size:28px;font-weight:700}.card .k{color:#5b6577;font-size:12px}
.ok{border-left-color:#1f9d55}.ok .v{color:#1f7a45}.bad{border-left-color:#d92d20}
.bad .v{color:#b42318}.warn{border-left-color:#f79009}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:8px;overflow:hidden}
th,td{padding:6px 10px;text-align:right;border-bottom:1px solid #e6e9ef}
th:first-child,td:first-child{text-align:left}th{background:#eef1f6;font-weight:600}
.panel{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
footer{color:#5b6577;font-size:12px;margin-top:28px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def card(key: str, value: object, cls: str = "") -> str:
    return (f'<div class="card {cls}"><div class="v">{esc(value)}</div>'
            f'<div class="k">{esc(key)}</div></div>')



def kv_table(rows: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(
        f"<tr><td>{esc(k)}</td><td class=\"l\">{esc('—' if v is None else v)}</td></tr>"
        for k, v in rows) + "</table>"


