"""A real Asterisk for the tests, booted in a throwaway directory.

:func:`find_asterisk` says which binary to use (``CONSENT_IVR_TEST_ASTERISK``, then the
reference build in ``../shared/asterisk/``, then ``asterisk`` on ``PATH``) or why there is
none; :class:`Asterisk` writes its own ``asterisk.conf`` and the rest of a small
configuration into a temp directory — the project's ``dialplan/`` kit included as an admin
would ``#include`` it, the ``.template`` files rendered with ``envsubst`` exactly as
docs/asterisk-kit.md says — on free loopback ports, starts it, and stops it.

Calls are Local channels (:meth:`Asterisk.call`): the ``;2`` half runs a test context that
sets the caller's line (caller ID, presentation, language, where the consent server is)
and goes into the kit; the ``;1`` half plays the caller and presses keys with
``SendDTMF`` on a schedule the test computes from the prompt manifest
(:class:`Timeline`), never from a guess at a prompt's length.

What happened on a call is read from the AMI (an admin user of the harness's own): every
dialplan step (``Newexten``), every variable set (``VarSet``), every AGI command
(``AGIExecStart``/``AGIExecEnd``) and the hangup, grouped by the call's ``Linkedid``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panoramisk import Manager

from agi.ops.config import repo_root

REPO = repo_root()
SHARED_INSTALL = REPO.parent / "shared" / "asterisk" / "install.sh"
DEFAULT_PREFIX = Path("/opt/refasterisk")
CORE_SOUNDS = (Path("/usr/share/asterisk/sounds/en_US_f_Allison"),
               Path("/usr/share/asterisk/sounds/en"),
               Path("/var/lib/asterisk/sounds/en"))
ADMIN_USER, ADMIN_SECRET = "harness", "harness-secret"
DIALER_SECRET = "dialer-test-secret"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the binary


@dataclass(frozen=True)
class Binary:
    """An Asterisk executable and what it needs to run."""

    path: Path
    prefix: Path  # holds lib/asterisk/modules and var/lib/asterisk/documentation
    source: str  # where it came from, for the test report

    @property
    def env(self) -> dict[str, str]:
        lib = str(self.prefix / "lib")
        old = os.environ.get("LD_LIBRARY_PATH")
        return {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{old}" if old else lib}

    @property
    def modules(self) -> Path:
        return self.prefix / "lib" / "asterisk" / "modules"

    @property
    def documentation(self) -> Path:
        return self.prefix / "var" / "lib" / "asterisk" / "documentation"


class Unavailable(Exception):
    """No usable Asterisk here; the message says what is missing (a skip reason)."""


def _check_runs(binary: Binary) -> None:
    """``asterisk -V`` must run: a SIGILL (built for another CPU) or a missing library is
    named as such, never mistaken for a working PBX."""
    try:
        out = subprocess.run([str(binary.path), "-V"], env=binary.env, capture_output=True,
                             timeout=30, check=False)
    except OSError as exc:
        raise Unavailable(f"{binary.path} ({binary.source}) cannot be executed: {exc}") from exc
    if out.returncode == -signal.SIGILL:
        raise Unavailable(f"{binary.path} ({binary.source}) died with SIGILL: it was built for "
                          "another CPU (-march=native); use CONSENT_IVR_TEST_ASTERISK")
    if out.returncode != 0:
        err = (out.stderr or out.stdout).decode(errors="replace").strip()
        what = "a runtime library is missing" if "shared object" in err else "it failed"
        raise Unavailable(f"{binary.path} ({binary.source}) does not run, {what}: {err[:300]}")


def find_asterisk() -> Binary:
    """The Asterisk to test against, or :class:`Unavailable` with the reason."""
    explicit = os.environ.get("CONSENT_IVR_TEST_ASTERISK")
    if explicit:
        path = Path(explicit)
        binary = Binary(path, path.resolve().parent.parent, "CONSENT_IVR_TEST_ASTERISK")
    elif SHARED_INSTALL.exists():
        # The reference build; install.sh is idempotent (a second run only checks).
        out = subprocess.run(["bash", str(SHARED_INSTALL), str(DEFAULT_PREFIX)],
                             capture_output=True, timeout=600, check=False)
        if out.returncode != 0:
            raise Unavailable(f"{SHARED_INSTALL} failed (exit {out.returncode}): "
                              + out.stderr.decode(errors="replace").strip()[-400:])
        path = Path(out.stdout.decode().strip().splitlines()[-1])
        binary = Binary(path, path.parent.parent, str(SHARED_INSTALL))
    elif found := shutil.which("asterisk"):
        path = Path(found).resolve()
        prefix = path.parent.parent
        binary = Binary(path, prefix if (prefix / "lib" / "asterisk").is_dir() else Path("/usr"),
                        "PATH")
    else:
        raise Unavailable("no Asterisk: ../shared/asterisk/ is absent, none on PATH and "
                          "CONSENT_IVR_TEST_ASTERISK is unset")
    _check_runs(binary)
    if not binary.modules.is_dir():
        raise Unavailable(f"{binary.path}: no module directory at {binary.modules}")
    return binary


def core_sounds() -> Path | None:
    for path in CORE_SOUNDS:
        if (path / "digits" / "1.gsm").exists() or (path / "digits" / "1.wav").exists():
            return path
    return None


# --------------------------------------------------------------------------- config


def envsubst(template: Path, values: Mapping[str, str]) -> str:
    """Render a kit template as docs/asterisk-kit.md does: ``envsubst`` limited to the
    template's own variables."""
    names = " ".join(f"${{{name}}}" for name in values)
    out = subprocess.run(["envsubst", names], input=template.read_bytes(),
                         env={**os.environ, **values}, capture_output=True, check=True)
    return out.stdout.decode()


#: Modules the tests need, loaded explicitly so the log holds only what matters.
MODULES = (
    "res_pjproject", "res_sorcery_config", "res_sorcery_memory", "res_sorcery_astdb",
    "res_pjsip", "res_pjsip_session", "res_pjsip_pubsub", "res_speech",
    "res_pjsip_authenticator_digest",
    "res_pjsip_outbound_authenticator_digest", "res_pjsip_endpoint_identifier_user",
    "res_pjsip_endpoint_identifier_ip", "res_pjsip_sdp_rtp", "res_pjsip_caller_id",
    "res_pjsip_registrar", "res_pjsip_nat", "res_pjsip_refer", "res_pjsip_dtmf_info",
    "res_pjsip_rfc3326", "res_pjsip_outbound_registration", "chan_pjsip", "res_rtp_asterisk",
    "res_timing_timerfd", "res_agi", "res_musiconhold", "pbx_config", "app_dial",
    "app_playback", "app_senddtmf", "app_stack", "app_verbose", "app_echo", "app_exec",
    "app_while", "app_userevent", "func_callerid", "func_channel", "func_cut", "func_logic",
    "func_strings", "func_global", "func_math", "func_uri", "codec_ulaw", "codec_alaw",
    "codec_gsm", "codec_resample", "codec_a_mu", "format_wav", "format_gsm", "format_pcm",
    "format_sln", "bridge_simple", "bridge_native_rtp", "bridge_builtin_features",
    "bridge_holding", "app_softhangup", "func_hangupcause", "app_transfer",
    "app_blind_transfer", "func_db",
)

#: Test contexts around the kit. ``test-line`` plays the phone line delivering a call
#: (caller ID, presentation, language, which consent server); ``test-caller`` is the
#: caller pressing keys.
TEST_DIALPLAN = r"""
[test-line]
; ${EXTEN} is the caller ID as the network delivers it; variables set by the originate
; (inherited through the Local channel) say the rest.
exten => _X.,1,NoOp(test line ${EXTEN})
 same => n,Goto(line,1)
exten => _+X.,1,NoOp(test line ${EXTEN})
 same => n,Goto(line,1)
exten => anonymous,1,NoOp(test line withheld)
 same => n,Goto(line,1)
exten => line,1,Set(CALLERID(num)=${IF($["${TEST_CID}" = "anonymous"]?:${TEST_CID})})
 same => n,Set(CALLERID(name)=Test Caller)
 same => n,ExecIf($["${TEST_PRES}" != ""]?Set(CALLERID(pres)=${TEST_PRES}))
 same => n,ExecIf($["${TEST_LANG}" != ""]?Set(CHANNEL(language)=${TEST_LANG}))
 same => n,ExecIf($["${TEST_AGI}" != ""]?Set(CONSENT_AGI=${TEST_AGI}))
 same => n,ExecIf($["${TEST_TOKEN}" != ""]?Set(CONSENT_AGI_TOKEN=${TEST_TOKEN}))
 same => n,Goto(${TEST_CONTEXT},${TEST_EXTEN},1)

[test-caller]
; TEST_SCRIPT: "seconds:keys" steps separated by "/"; keys "H" hang up. Each wait counts
; from the previous step; the first from the moment the line answered.
exten => s,1,NoOp(test caller ${TEST_SCRIPT})
 same => n,Set(TEST_I=1)
 same => n,While($["${CUT(TEST_SCRIPT,/,${TEST_I})}" != ""])
 same => n,Set(TEST_STEP=${CUT(TEST_SCRIPT,/,${TEST_I})})
 same => n,Wait(${CUT(TEST_STEP,:,1)})
 same => n,ExecIf($["${CUT(TEST_STEP,:,2)}" = "H"]?Hangup())
 same => n,SendDTMF(${CUT(TEST_STEP,:,2)},200)
 same => n,Set(TEST_I=$[${TEST_I} + 1])
 same => n,EndWhile()
 same => n,Wait(300)
 same => n,Hangup()

[test-agent]
; The agent a transferred caller is dialled back to: answers, then hangs up.
exten => s,1,Answer()
 same => n,UserEvent(TestAgentAnswered,Linked: ${CHANNEL(linkedid)})
 same => n,Wait(1)
 same => n,Hangup()

[test-transfer]
; A caller talking to an agent: the agent's side transfers (Gosub form, or a blind
; transfer with BLINDTRANSFER set as Asterisk sets it) into the kit.
exten => gosub,1,Answer()
 same => n,Gosub(consent-transfer,sub,1)
 same => n,UserEvent(TestGosubReturned,Result: ${CONSENT_RESULT})
 same => n,Dial(Local/s@test-agent/n,20)
 same => n,Hangup()
exten => blind,1,Answer()
 same => n,ExecIf($["${TEST_BLIND}" != ""]?Set(BLINDTRANSFER=${TEST_BLIND}))
 same => n,Goto(consent-transfer,s,1)

[test-admin-line]
; An admin not using the kit: the README's one line, no Answer() before the AGI, so the
; flow must answer the channel itself.
exten => s,1,AGI(${CONSENT_AGI}/consent?purpose=marketing-calls&token=${CONSENT_AGI_TOKEN})
 same => n,Hangup()

[test-callee]
; The far end of an outbound call: answers, then presses keys like test-caller.
exten => _X.,1,NoOp(test callee ${EXTEN})
 same => n,Set(TEST_RING=${DB(test/ring/${EXTEN})})
 same => n,UserEvent(TestCalleeRinging,Number: ${EXTEN})
 same => n,ExecIf($["${TEST_RING}" != ""]?Wait(${TEST_RING}))
 same => n,Answer()
 same => n,UserEvent(TestCalleeAnswered,Number: ${EXTEN})
 same => n,Set(TEST_SCRIPT=${DB(test/script/${EXTEN})})
 same => n,Goto(test-caller,s,2)
exten => _+X.,1,Goto(test-callee,${EXTEN:1},1)
"""


@dataclass
class CallRecord:
    """Everything the AMI said about one call (both halves), in order."""

    linkedid: str
    steps: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    #: (channel, context, exten, application, appdata)
    variables: list[tuple[str, str, str]] = field(default_factory=list)  # (channel, name, value)
    agi: list[tuple[str, str, str]] = field(default_factory=list)  # (channel, command, result)
    agi_started: list[str] = field(default_factory=list)  # commands as they begin
    user_events: list[dict[str, str]] = field(default_factory=list)
    hungup: set[str] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)
    uniqueids: dict[str, str] = field(default_factory=dict)  # channel name -> Uniqueid

    @property
    def line_channel(self) -> str:
        """The half that ran the kit and its AGI: the Local ``;2`` of an inbound call, the
        ``;1`` (the originated channel) of an outbound one."""
        for ch, *_ in self.agi:
            return ch
        return next(ch for ch in sorted(self.channels) if ch.endswith(";2"))

    def last(self, name: str) -> str | None:
        """The last value ``name`` was set to on the AGI half of the call."""
        line = self.line_channel
        vals = [v for ch, n, v in self.variables if n == name and ch == line]
        return vals[-1] if vals else None

    def contexts(self) -> list[str]:
        """The contexts the line's half went through, in order, without repeats."""
        out: list[str] = []
        line = self.line_channel
        for ch, ctx, *_ in self.steps:
            if ch != line:
                continue
            if not out or out[-1] != ctx:
                out.append(ctx)
        return out

    def playbacks(self) -> list[str]:
        """What the dialplan itself played (``Playback``), in order."""
        line = self.line_channel
        return [data for ch, _ctx, _e, app, data in self.steps
                if app == "Playback" and ch == line]

    def agi_commands(self) -> list[list[str]]:
        """Every AGI command the server sent, as words (the server quotes arguments)."""
        return [shlex.split(cmd) for _ch, cmd, _res in self.agi]

    def prompts_streamed(self) -> list[str]:
        """Prompts the AGI server asked Asterisk to play (STREAM FILE / GET OPTION /
        GET DATA), by name."""
        out = []
        for words in self.agi_commands():
            if words[:2] in (["STREAM", "FILE"], ["GET", "OPTION"], ["GET", "DATA"]):
                out.append(words[2])
        return out

    def summary(self) -> str:
        return json.dumps({"contexts": self.contexts(), "agi": self.agi,
                           "vars": self.variables, "playbacks": self.playbacks()}, indent=1)


class Asterisk:
    """One Asterisk process with its own configuration in ``root``."""

    def __init__(self, binary: Binary, root: Path, *, agi_port: int, agi_token: str,
                 extra_dialplan: str = "", sounds: Path = REPO / "sounds") -> None:
        self.binary = binary
        self.root = root
        self.etc = root / "etc"
        self.logfile = root / "log" / "full"
        self.ami_port = free_port()
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.rtp_start = 20000 + (os.getpid() % 2000) * 10
        self.agi_port = agi_port
        self.agi_token = agi_token
        self.extra_dialplan = extra_dialplan
        self.sounds = sounds
        self.proc: subprocess.Popen[bytes] | None = None
        self.calls: dict[str, CallRecord] = {}
        self._ami: Manager | None = None
        self._call_ids = itertools.count(1)
        self._waiters: dict[str, list[asyncio.Future[CallRecord]]] = defaultdict(list)
        self.originated: list[dict[str, str]] = []  # every Newchannel the PBX reported

    # ------------------------------------------------------------------ configuration

    def write_config(self) -> None:
        for sub in ("etc", "log", "run", "spool", "lib/keys", "data/sounds/en", "data/sounds/cy",
                    "data/agi-bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        data = self.root / "data"
        doc = data / "documentation"
        if not doc.exists():
            doc.symlink_to(self.binary.documentation)
        core = core_sounds()
        if core is not None:
            for entry in core.iterdir():
                link = data / "sounds" / "en" / entry.name
                if not link.exists():
                    link.symlink_to(entry)
        for lang in ("en", "cy"):
            link = data / "sounds" / lang / "consent-ivr"
            if not link.exists():
                link.symlink_to(self.sounds / lang / "consent-ivr")
        r = self.root
        (self.etc / "asterisk.conf").write_text(f"""[directories]
astetcdir => {self.etc}
astmoddir => {self.binary.modules}
astvarlibdir => {r}/lib
astdbdir => {r}/lib
astkeydir => {r}/lib
astdatadir => {data}
astagidir => {data}/agi-bin
astspooldir => {r}/spool
astrundir => {r}/run
astlogdir => {r}/log
astsbindir => {self.binary.path.parent}
[options]
runuser = {os.environ.get("USER", "root") if os.getuid() else "root"}
rungroup = root
nocolor = yes
""")
        (self.etc / "modules.conf").write_text(
            "[modules]\nautoload = no\n" + "".join(f"load => {m}.so\n" for m in MODULES))
        (self.etc / "logger.conf").write_text(
            "[general]\ndateformat = %F %T.%3q\n[logfiles]\n"
            "full => notice,warning,error,verbose(4),dtmf\n")
        (self.etc / "rtp.conf").write_text(
            f"[general]\nrtpstart = {self.rtp_start}\nrtpend = {self.rtp_start + 199}\n")
        (self.etc / "musiconhold.conf").write_text("[general]\n")
        # The kit, copied as an admin copies it, and the templates rendered as documented.
        for name in ("extensions_consent.conf", "extensions_consent_demo.conf"):
            shutil.copy(REPO / "dialplan" / name, self.etc / name)
        (self.etc / "consent_globals.conf").write_text(envsubst(
            REPO / "dialplan" / "consent_globals.conf.template",
            {"CONSENT_AGI": f"agi://127.0.0.1:{self.agi_port}",
             "CONSENT_IVR_AGI_TOKEN": self.agi_token}))
        (self.etc / "manager_consent.conf").write_text(envsubst(
            REPO / "dialplan" / "manager_consent.conf.template",
            {"CONSENT_IVR_AMI_SECRET": DIALER_SECRET,
             "CONSENT_AMI_PERMIT": "127.0.0.1/255.255.255.255"}))
        (self.etc / "pjsip_consent.conf").write_text(envsubst(
            REPO / "dialplan" / "pjsip_consent.conf.template",
            {"CONSENT_SIP_6001_PASSWORD": "agent-6001-pw",
             "CONSENT_SIP_6002_PASSWORD": "customer-6002-pw",
             "CONSENT_TRUNK_HOST": "192.0.2.1", "CONSENT_TRUNK_USERNAME": "consent",
             "CONSENT_TRUNK_PASSWORD": "trunk-pw"}))
        (self.etc / "extensions.conf").write_text(
            "[general]\nstatic = yes\nwriteprotect = yes\nclearglobalvars = yes\n\n"
            "[globals]\n#include consent_globals.conf\n\n"
            "#include extensions_consent.conf\n#include extensions_consent_demo.conf\n"
            + TEST_DIALPLAN + self.extra_dialplan)
        (self.etc / "manager.conf").write_text(f"""[general]
enabled = yes
port = {self.ami_port}
bindaddr = 127.0.0.1
displayconnects = no

[{ADMIN_USER}]
secret = {ADMIN_SECRET}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = all
write = all

#include manager_consent.conf
""")
        (self.etc / "pjsip.conf").write_text(f"""[transport-udp]
type = transport
protocol = udp
bind = 127.0.0.1:{self.sip_port}

#include pjsip_consent.conf
""")

    # ------------------------------------------------------------------ lifecycle

    @property
    def conf(self) -> str:
        return str(self.etc / "asterisk.conf")

    def start(self, timeout: float = 60.0, *, configure: bool = True) -> None:
        if configure:
            self.write_config()
        with (self.root / "log" / "console").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary.path), "-C", self.conf, "-f", "-n", "-q"],
                env=self.binary.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_booted(timeout)

    def wait_booted(self, timeout: float = 60.0) -> None:
        """Until ``core waitfullybooted`` answers (also after ``core restart now``)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"asterisk exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            ok = subprocess.run([str(self.binary.path), "-C", self.conf, "-rx",
                                 "core waitfullybooted"], env=self.binary.env,
                                capture_output=True, timeout=30, check=False)
            if ok.returncode == 0 and b"fully booted" in ok.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("asterisk did not boot:\n" + self.log_tail())
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run([str(self.binary.path), "-C", self.conf, "-rx", "core stop now"],
                       env=self.binary.env, capture_output=True, timeout=30, check=False)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def rx(self, command: str) -> str:
        """One CLI command (``asterisk -rx``); its output."""
        out = subprocess.run([str(self.binary.path), "-C", self.conf, "-rx", command],
                             env=self.binary.env, capture_output=True, timeout=30, check=False)
        return out.stdout.decode(errors="replace")

    def log_text(self) -> str:
        text = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        console = self.root / "log" / "console"
        if console.exists():
            text += "\n--- console ---\n" + console.read_text(errors="replace")
        return text

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ AMI (harness)

    async def connect_ami(self) -> Manager:
        """The harness's admin AMI session: records every event of every call."""
        if self._ami is not None:
            return self._ami
        manager = Manager(host="127.0.0.1", port=self.ami_port, username=ADMIN_USER,
                          secret=ADMIN_SECRET, ping_delay=0, reconnect_timeout=1,
                          forgetable_actions=("Originate",))
        manager.register_event("*", self._on_event)
        await manager.connect()
        self._ami = manager
        return manager

    async def close_ami(self) -> None:
        if self._ami is not None:
            self._ami.close()
            self._ami = None

    def _record(self, ev: Mapping[str, Any]) -> CallRecord | None:
        linked = ev.get("Linkedid") or ev.get("Uniqueid")
        if not linked:
            return None
        rec = self.calls.get(linked)
        if rec is None:
            rec = self.calls[linked] = CallRecord(linked)
        return rec

    def _on_event(self, _manager: Any, ev: Mapping[str, Any]) -> None:
        name = ev.get("Event")
        if name == "Newchannel":
            self.originated.append({k: str(v) for k, v in ev.items()})
        rec = self._record(ev)
        if rec is None:
            return
        ch = str(ev.get("Channel", ""))
        if ch and name == "Newchannel":
            rec.channels.add(ch)
            rec.uniqueids[ch] = str(ev.get("Uniqueid", ""))
        if name == "Newexten":
            rec.steps.append((ch, ev.get("Context", ""), ev.get("Extension", ""),
                              ev.get("Application", ""), ev.get("AppData", "")))
        elif name == "VarSet":
            rec.variables.append((ch, ev.get("Variable", ""), ev.get("Value", "")))
        elif name == "AGIExecStart":
            rec.agi_started.append(ev.get("Command", ""))
        elif name == "AGIExecEnd":
            rec.agi.append((ch, ev.get("Command", ""), ev.get("Result", "")))
        elif name == "UserEvent":
            rec.user_events.append({k: str(v) for k, v in ev.items()})
        elif name == "Hangup":
            rec.hungup.add(ch)
            if rec.channels and rec.hungup >= rec.channels:
                for fut in self._waiters.pop(rec.linkedid, []):
                    if not fut.done():
                        fut.set_result(rec)

    async def originate(self, fields: Mapping[str, Any]) -> str:
        """Originate (Async) with the harness's user; the ``;1`` half's Uniqueid, which is
        the call's Linkedid."""
        manager = await self.connect_ami()
        action_id = f"h-{next(self._call_ids)}"
        replies = await manager.send_action({"Action": "Originate", "Async": "true",
                                             "ActionID": action_id, **fields})
        msgs = replies if isinstance(replies, list) else [replies]
        for msg in msgs:
            if msg.get("Event") == "OriginateResponse":
                if msg.get("Response") != "Success":
                    raise RuntimeError(f"originate failed: {dict(msg)}\n{self.log_tail()}")
                return str(msg["Uniqueid"])
            if msg.get("Response") == "Error":
                raise RuntimeError(f"originate refused: {dict(msg)}")
        raise RuntimeError(f"no OriginateResponse: {msgs}")

    async def call(self, caller_id: str, script: Iterable[tuple[float, str]], *,
                   timeout: float = 150.0, **kwargs: str) -> CallRecord:
        """Place one call into the kit and wait until both halves hung up."""
        linkedid = await self.start_call(caller_id, script, **kwargs)
        return await self.wait_call(linkedid, timeout)

    async def in_command(self, linkedid: str, *words: str, timeout: float = 60.0) -> None:
        """Wait until the call's AGI has begun a command whose first words are ``words``
        (e.g. ``"GET", "OPTION", "consent-ivr/question-marketing-calls"``), to act on a
        call at a known moment."""
        deadline = time.monotonic() + timeout
        n = len(words)

        def begun() -> bool:
            rec = self.calls.get(linkedid)
            return rec is not None and any(
                tuple(shlex.split(c)[:n]) == words for c in rec.agi_started)

        while not begun():
            if time.monotonic() > deadline:
                raise AssertionError(f"call {linkedid} never began {' '.join(words)}")
            await asyncio.sleep(0.05)

    async def start_call(self, caller_id: str, script: Iterable[tuple[float, str]], *,
                   context: str = "consent-inbound", exten: str = "s", pres: str = "",
                   lang: str = "", agi: str = "", token: str = "", **extra: str) -> str:
        """Place one call into the kit; its Linkedid. ``extra`` are more channel variables.

        ``script``: (seconds after the previous step, keys) for the caller; "H" hangs up.
        """
        steps = "/".join(f"{max(delay, 0.0):.2f}:{keys}" for delay, keys in script)
        variables = {"TEST_CID": caller_id or "anonymous", "TEST_PRES": pres,
                     "TEST_LANG": lang, "TEST_AGI": agi, "TEST_TOKEN": token,
                     "TEST_CONTEXT": context, "TEST_EXTEN": exten, "TEST_SCRIPT": steps,
                     **extra}
        line = caller_id if caller_id and caller_id != "anonymous" else "anonymous"
        return await self.originate({
            "Channel": f"Local/{line}@test-line/n",
            "Context": "test-caller", "Exten": "s", "Priority": "1",
            "Timeout": "30000", "CallerID": f"Test <{caller_id}>",
            # one header per variable: Asterisk splits a Variable header on commas
            "Variable": [f"__{k}={v}" for k, v in variables.items() if v],
        })

    async def wait_call(self, linkedid: str, timeout: float = 150.0) -> CallRecord:
        rec = self.calls.get(linkedid)
        if rec is not None and rec.channels and rec.hungup >= rec.channels:
            return rec
        fut: asyncio.Future[CallRecord] = asyncio.get_running_loop().create_future()
        self._waiters[linkedid].append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            rec = self.calls.get(linkedid)
            raise AssertionError(f"call {linkedid} did not end within {timeout} s: "
                                 f"{rec.summary() if rec else 'no events'}") from None


# --------------------------------------------------------------------------- timing


class Timeline:
    """When to press, from the prompt manifest (``sounds/manifest.json``).

    ``Timeline(lang).through("identify")`` is the length of the prompts named, so a
    caller's script can say "press 1 two seconds into the question" without assuming how
    long anything is.
    """

    def __init__(self, lang: str = "en", manifest: Path = REPO / "sounds" / "manifest.json"):
        data = json.loads(manifest.read_text())
        self.seconds: dict[str, float] = {}
        for p in data["prompts"]:
            if p["lang"] == lang or (p["id"] not in self.seconds and p["lang"] == "en"):
                self.seconds[p["id"]] = p["samples"] / 8000.0

    def length(self, *prompt_ids: str) -> float:
        return sum(self.seconds[p] for p in prompt_ids)

