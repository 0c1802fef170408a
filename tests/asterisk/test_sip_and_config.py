"""SIP with RFC 4733 DTMF into the real Asterisk, and the compose stack's PBX config
loaded by the real Asterisk.

* The project's SIPp softphone (``sipp/call.sh``) registers as the kit's endpoint 6002
  (digest auth, rendered ``pjsip_consent.conf``), calls in, presses 1 then 1 as RFC 4733
  telephone-events and opts in; its key times come from the prompt manifest.
* ``docker/asterisk/etc/*`` with the kit rendered as the entrypoint renders it, booted by
  the real Asterisk (with the image's ``modules.conf``): the log shows no error or warning
  about any file the stack ships.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agi.ops.config import repo_root
from tests.asterisk.conftest import TOKEN, fetch_rows, start_serve
from tests.asterisk.pbx import Asterisk, Binary, Timeline, envsubst, free_port

REPO = repo_root()
EN = Timeline("en")
#: a test extension in the phones' context: the demo phones' own caller ID (6002) is no
#: phone number, so this line presents the customer's real one, as a trunk would
SIP_LINE = """
[consent-phones]
exten => 7999,1,Set(CALLERID(num)=+447400400001)
 same => n,Goto(consent-inbound,s,1)
"""


def test_sipp_softphone_opts_in_with_rfc4733_dtmf(
        asterisk_binary: Binary, tier_dir: Path, tier_db: str) -> None:
    if shutil.which("sipp") is None:
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    home = tier_dir / "sip"
    pbx = Asterisk(asterisk_binary, home / "asterisk", agi_port=free_port(), agi_token=TOKEN,
                   extra_dialplan=SIP_LINE)
    pbx.start()
    serve = start_serve(tier_db, home / "serve", pbx.agi_port,
                        CONSENT_IVR_INSTANCE="tier-sip")
    try:
        # 0.6 s to the first prompt, then 2 s into the question; then the statement plays
        # whole and the second 1 comes 3 s into the confirmation
        first_ms = int((0.6 + EN.length("identify") + 2.0) * 1000)
        gap_ms = int((EN.length("statement-marketing-calls") + 3.0) * 1000)
        out = subprocess.run(
            ["sh", str(REPO / "sipp" / "call.sh"), "1,1", f"127.0.0.1:{pbx.sip_port}"],
            env={**os.environ, "SIPP_PASSWORD": "customer-6002-pw", "SIPP_EXTEN": "7999",
                 "SIPP_FIRST_DTMF_MS": str(first_ms), "SIPP_DTMF_GAP_MS": str(gap_ms),
                 "SIPP_LOCAL_IP": "127.0.0.1"},
            capture_output=True, text=True, timeout=180, check=False)
        assert out.returncode == 0, out.stdout + out.stderr

        [event] = asyncio.run(fetch_rows(
            tier_db, "SELECT * FROM consent_event WHERE number_e164 = '+447400400001'"))
        assert event["decision"] == "opt_in"
        assert event["channel_name"].startswith("PJSIP/6002-")
        keys = [(d["step"], d["digit"]) for d in json.loads(event["digits"])
                if d["step"] in {"question", "confirm"}]
        assert keys == [("question", "1"), ("confirm", "1")]
        log = pbx.log_text()
        assert "DTMF end '1' received on PJSIP/6002" in log
    finally:
        serve.kill()
        pbx.stop()


#: lines of a booted Asterisk's log that name a file or object the stack ships
_OURS = ("pjsip", "extensions", "manager.conf", "rtp.conf", "logger.conf", "consent",
         "res_agi", "res_sorcery_config", "pbx_config", "chan_pjsip")


def _entrypoint_default(name: str) -> str:
    text = (REPO / "docker" / "asterisk" / "entrypoint.sh").read_text()
    match = re.search(r': "\$\{' + name + r':=([^}]*)\}"', text)
    assert match, f"entrypoint.sh sets no default for {name}"
    return match.group(1)


def _optional_file_missing(line: str, shipped: set[str]) -> bool:
    """Asterisk's complaint about an optional file the stack does not ship (pjproject.conf
    and the like): not about our configuration."""
    match = re.search(r"Unable to load config file '([^']+)'", line)
    return bool(match) and match.group(1) not in shipped


def test_compose_stack_asterisk_config_loads_cleanly(asterisk_binary: Binary,
                                                     tier_dir: Path) -> None:
    root = tier_dir / "compose-etc"
    pbx = Asterisk(asterisk_binary, root, agi_port=free_port(), agi_token=TOKEN)
    pbx.write_config()  # directories, sounds and asterisk.conf of the harness
    etc = pbx.etc
    for stale in etc.glob("*.conf"):
        if stale.name != "asterisk.conf":
            stale.unlink()
    env = {"CONSENT_LOCAL_NET": "172.28.0.0/16", "CONSENT_EXTERNAL_IP": "127.0.0.1"}
    # what docker/asterisk/entrypoint.sh does, file for file
    for conf in (REPO / "docker" / "asterisk" / "etc").glob("*.conf"):
        (etc / conf.name).write_text(envsubst(conf, env))
    for name in ("extensions_consent.conf", "extensions_consent_demo.conf"):
        shutil.copy(REPO / "dialplan" / name, etc / name)
    (etc / "consent_globals.conf").write_text(envsubst(
        REPO / "dialplan" / "consent_globals.conf.template",
        {"CONSENT_AGI": "agi://consent-ivr:4573", "CONSENT_IVR_AGI_TOKEN": TOKEN}))
    (etc / "pjsip_consent.conf").write_text(envsubst(
        REPO / "dialplan" / "pjsip_consent.conf.template",
        {"CONSENT_SIP_6001_PASSWORD": "a", "CONSENT_SIP_6002_PASSWORD": "b",
         # the entrypoint's default when no trunk is configured
         "CONSENT_TRUNK_HOST": _entrypoint_default("CONSENT_TRUNK_HOST"),
         "CONSENT_TRUNK_USERNAME": "consent",
         "CONSENT_TRUNK_PASSWORD": "generated-by-the-entrypoint"}))
    (etc / "manager_consent.conf").write_text(envsubst(
        REPO / "dialplan" / "manager_consent.conf.template",
        {"CONSENT_IVR_AMI_SECRET": "s", "CONSENT_AMI_PERMIT": "172.28.0.0/255.255.0.0"}))
    # the image binds 0.0.0.0:5060 and 5038; here only loopback and free ports
    pjsip = etc / "pjsip.conf"
    pjsip.write_text(pjsip.read_text().replace("0.0.0.0:5060", f"127.0.0.1:{pbx.sip_port}"))
    manager = etc / "manager.conf"
    manager.write_text(manager.read_text().replace("port = 5038", f"port = {pbx.ami_port}")
                       .replace("bindaddr = 0.0.0.0", "bindaddr = 127.0.0.1"))
    rtp = etc / "rtp.conf"
    rtp.write_text(rtp.read_text().replace("10000", str(pbx.rtp_start))
                   .replace("10019", str(pbx.rtp_start + 19)))
    logger = etc / "logger.conf"
    logger.write_text(logger.read_text() + "full => notice,warning,error,verbose(3)\n")
    pbx.start(configure=False)
    try:
        dialplan = pbx.rx("dialplan show consent-inbound")
        endpoints = pbx.rx("pjsip show endpoints")
        users = pbx.rx("manager show user consent-dialer")
    finally:
        pbx.stop()
    assert "consent-inbound" in dialplan and "AGI(" in dialplan, dialplan
    for name in ("6001", "6002", "trunk"):
        assert f"Endpoint:  {name}" in endpoints, endpoints
    assert "originate" in users and "reporting" in users, users
    shipped = {p.name for p in etc.glob("*.conf")}
    problems = [ln for ln in pbx.log_text().splitlines()
                if (" ERROR[" in ln or " WARNING[" in ln)
                and any(word in ln.lower() for word in _OURS)
                and "loader.c" not in ln  # optional modules declining without their files
                and not _optional_file_missing(ln, shipped)]
    assert problems == [], "\n".join(problems)
