"""Static checks of the Asterisk kit: what can be verified without Docker or Asterisk.

Dialplan: every jump target exists; the variables it reads are the ones agi/wire/variables.py
says flows and the dialer set (plus its own and Asterisk's); every flow variable is
branched on; the AGI URLs hit the server's routes; and a small interpreter walks the
contexts through every outcome a server can leave behind (down, crashed, error, stale
variables, each valid result) to show that each ends where it should, fail closed.
Prompts: present, hash-matching, 8 kHz mono 16-bit, complete per catalogue and per use.
AMI: exactly read=call, write=originate,reporting. PJSIP: RFC 4733. No committed secrets.
Compose: parses, and every service, build context, Dockerfile, mount, volume, port and
variable it names exists. SIPp: well-formed, DTMF steps present and decodable.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit_conf import Dialplan, Priority, parse_conf, parse_dialplan, split_args
from prompts_check import check_prompts, load_manifest, make_prompts_module, prompt_index

from agi.wire import variables as cv

ROOT = Path(__file__).resolve().parents[2]
DIALPLAN = ROOT / "dialplan"
KIT = DIALPLAN / "extensions_consent.conf"
DEMO = DIALPLAN / "extensions_consent_demo.conf"
ASTERISK_ETC = ROOT / "docker" / "asterisk" / "etc"

KIT_CONTEXTS = {"consent-inbound", "consent-transfer", "consent-outbound", "consent-fallback"}
# Global variables the admin defines ([globals] / consent_globals.conf).
DIALPLAN_GLOBALS = {"CONSENT_AGI", "CONSENT_AGI_TOKEN"}
# Set by the admin's agent dialplan on the caller's channel before a transfer.
AGENT_SET = {"CONSENT_RETURN_TO"}
# Channel variables and functions Asterisk itself provides that the kit may read.
ASTERISK_BUILTINS = {"AGISTATUS", "DIALSTATUS", "BLINDTRANSFER", "CHANNEL", "EXTEN", "CONTEXT",
                     "UNIQUEID"}
ASTERISK_FUNCTIONS = {"CALLERID", "CHANNEL", "CUT"}
JUMP_APPS = {"Goto", "GotoIf", "Gosub", "GosubIf"}
PLAY_APPS = {"Playback", "Background", "ControlPlayback", "Read", "SayDigits"}


@pytest.fixture(scope="module")
def plan() -> Dialplan:
    return parse_dialplan(KIT, DEMO)


@pytest.fixture(scope="module")
def kit() -> Dialplan:
    return parse_dialplan(KIT)


# ---------------------------------------------------------------- dialplan structure


def _targets(prio: Priority) -> list[str]:
    """Jump targets of a Goto/GotoIf/Gosub/GosubIf priority."""
    if prio.app in {"Goto", "Gosub"}:
        return [prio.args]
    _, _, branches = prio.args.partition("?")
    return [b for b in split_args(branches, ":") if b.strip()]


def _resolve(target: str, prio: Priority) -> tuple[str, str, str]:
    parts = [p.strip() for p in split_args(target)]
    if len(parts) == 1:
        return prio.context, prio.exten, parts[0]
    if len(parts) == 2:
        return prio.context, parts[0], parts[1]
    return parts[0], parts[1], parts[2]


def test_kit_defines_the_four_contexts_and_an_h_extension_where_agi_runs(kit: Dialplan) -> None:
    assert KIT_CONTEXTS <= set(kit.contexts)
    for context, extens in kit.contexts.items():
        if any(p.app == "AGI" for prios in extens.values() for p in prios):
            assert "h" in extens, f"{context} runs AGI but has no h extension to log hangups"
    # The dialer originates to consent-outbound,s,1.
    assert kit.has_target("consent-outbound", "s", "1")


def test_every_jump_target_exists(plan: Dialplan) -> None:
    jumps = [p for p in plan.priorities() if p.app in JUMP_APPS]
    assert jumps, "no jumps found: parser broken?"
    for prio in jumps:
        for target in _targets(prio):
            context, exten, label = _resolve(target, prio)
            assert plan.has_target(context, exten, label), f"{prio.where}: {target} does not exist"


def test_demo_and_trunk_routes_enter_the_kit(plan: Dialplan) -> None:
    entry = {(p.context, p.exten): p.args for p in plan.priorities() if p.app == "Goto"}
    assert entry[("consent-from-trunk", "_X.")] == "consent-inbound,s,1"
    assert entry[("consent-phones", "7100")] == "consent-transfer,s,1"
    assert any(p.args == "CHANNEL(language)=cy" for p in plan.extension("consent-phones", "7001"))


_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(\(([^)]*)\))?")


def _reads(prio: Priority) -> set[str]:
    names = set()
    for match in _VAR_REF.finditer(prio.args):
        name, call, fargs = match.group(1), match.group(2), match.group(3)
        if call:
            assert name in ASTERISK_FUNCTIONS, f"{prio.where}: unexpected function {name}()"
            if name == "CUT":  # CUT(varname,delim,field) reads varname
                names.add(split_args(fargs)[0].strip())
        else:
            names.add(name)
    return names


def _writes(prio: Priority) -> dict[str, str]:
    if prio.app != "Set":
        return {}
    name, _, value = prio.args.partition("=")
    return {name.strip(): value}


def test_dialplan_reads_only_known_variables(plan: Dialplan) -> None:
    own = {n for p in plan.priorities() for n in _writes(p) if n.startswith("CONSENT_DP_")}
    allowed = (cv.SET_BY_FLOWS | cv.SET_BY_DIALER | DIALPLAN_GLOBALS | AGENT_SET | own
               | ASTERISK_BUILTINS)
    for prio in plan.priorities():
        unknown = _reads(prio) - allowed
        assert not unknown, f"{prio.where}: reads {sorted(unknown)}, set by nobody we know"


def test_dialplan_writes_no_flow_or_dialer_variable_except_to_clear_it(plan: Dialplan) -> None:
    for prio in plan.priorities():
        for name, value in _writes(prio).items():
            if name in cv.SET_BY_FLOWS | cv.SET_BY_DIALER:
                assert value == "", f"{prio.where}: only flows/dialer set {name} (clearing is ok)"
            elif name.startswith("CONSENT_"):
                assert name.startswith("CONSENT_DP_") or name in AGENT_SET, (
                    f"{prio.where}: {name}: dialplan-only variables are CONSENT_DP_*"
                )


def _conditions(plan: Dialplan) -> list[tuple[Priority, str]]:
    conditional = {"GotoIf", "GosubIf"}
    return [(p, p.args.partition("?")[0]) for p in plan.priorities() if p.app in conditional]


def test_every_flow_variable_is_branched_on_and_every_dialer_variable_is_used(
    kit: Dialplan,
) -> None:
    branched = {n for p, cond in _conditions(kit) for n in _VAR_REF.findall(cond) for n in [n[0]]}
    missing = cv.SET_BY_FLOWS - branched
    assert not missing, f"the dialplan never branches on {sorted(missing)}"
    read = {n for p in kit.priorities() for n in _reads(p)}
    assert cv.SET_BY_DIALER <= read


_COND = re.compile(r'^\$\["\$\{(?P<var>[A-Z_]+)\}" (?P<op>!?=) "(?P<value>[^"]*)"\]$')


def test_conditions_compare_consent_result_only_with_real_values(plan: Dialplan) -> None:
    for prio, cond in _conditions(plan):
        match = _COND.match(cond)
        assert match, f'{prio.where}: write conditions as $["${{VAR}}" = "value"]: {cond}'
        if match["var"] == cv.CONSENT_RESULT and match["value"]:
            assert match["value"] in cv.CONSENT_RESULTS, f"{prio.where}: {match['value']!r}"
        if match["var"] == "AGISTATUS":
            assert match["value"] in {"SUCCESS", "FAILURE", "NOTFOUND", "HANGUP"}


def test_agi_urls_hit_the_server_routes_with_the_token(kit: Dialplan) -> None:
    urls = {(p.context, p.exten): p.args for p in kit.priorities() if p.app == "AGI"}
    token = "token=${CONSENT_AGI_TOKEN}"
    # each saves the flow a round trip: its GET VARIABLE, its ANSWER
    linked = "linkedid=${CHANNEL(linkedid)}&answered=1&"
    assert urls == {
        ("consent-inbound", "s"):
            "${CONSENT_AGI}/consent?purpose=marketing-calls&" + linked + token,
        ("consent-transfer", "sub"):
            "${CONSENT_AGI}/consent?purpose=marketing-calls&method=agent_transfer&" + linked
            + token,
        ("consent-outbound", "s"):
            "${CONSENT_AGI}/marketing?campaign=${CONSENT_CAMPAIGN}&attempt=${CONSENT_ATTEMPT}"
            "&answered=1&" + token,
    }


def test_dialplan_never_plays_marketing_audio(plan: Dialplan) -> None:
    played = [p for p in plan.priorities() if p.app in PLAY_APPS]
    assert played
    for prio in played:
        prompt = split_args(prio.args)[0]
        assert prompt.startswith("consent-ivr/"), f"{prio.where}: plays {prompt}"
        assert not prompt.split("/", 1)[1].startswith(("campaign-", "marketing-")), (
            f"{prio.where}: marketing audio is the AGI server's alone, after its gate"
        )


# ------------------------------------------------------ walking the dialplan, outcome by outcome


@dataclass
class Walk:
    """The path one simulated call took through the dialplan."""

    visited: list[tuple[str, str]] = field(default_factory=list)
    played: list[str] = field(default_factory=list)
    agi: list[str] = field(default_factory=list)
    dialled: list[str] = field(default_factory=list)
    ended: str = ""  # "hangup in <context>" / "caller hung up"
    answered: bool = False  # an Answer() ran before the current point
    agi_on_answered: list[bool] = field(default_factory=list)  # per AGI(): answered by then?


_INNER = re.compile(r"\$\{([^${}]*)\}")


def _substitute(text: str, env: dict[str, str]) -> str:
    while True:
        match = _INNER.search(text)
        if not match:
            return text
        expr = match.group(1)
        if "(" in expr:
            func, _, fargs = expr.partition("(")
            args = split_args(fargs[:-1])
            if func == "CUT":
                value = env.get(args[0], "").split(args[1])[int(args[2]) - 1]
            else:
                value = env.get(expr, "")
        elif ":" in expr:  # ${VAR:offset:length}, a negative length counts from the end
            name, offset, length = [*expr.split(":"), ""][:3]
            whole = env.get(name, "")[int(offset):]
            value = whole[: int(length)] if length else whole
        else:
            value = env.get(expr, "")
        text = text[: match.start()] + value + text[match.end():]


def _evaluate(cond: str) -> bool:
    match = re.fullmatch(r'\$\["(.*)" (!?=) "(.*)"\]', cond)
    assert match, f"cannot evaluate {cond}"
    equal = match.group(1) == match.group(3)
    return equal if match.group(2) == "=" else not equal


def walk(plan: Dialplan, context: str, exten: str, env: dict[str, str],
         agi_sets: dict[str, str] | None = None, agi_hangup: bool = False,
         dialstatus: str = "NOANSWER") -> Walk:
    """Run the dialplan from (context, exten, 1) the way Asterisk would, for the apps we use.

    ``agi_sets``: channel variables the AGI server leaves behind (AGISTATUS included);
    ``agi_hangup``: the caller hangs up during the AGI (then only h would run).
    """
    env = dict(env)
    result = Walk()
    stack: list[tuple[str, str, int]] = []
    prios = plan.extension(context, exten)
    index = 0
    for _ in range(500):
        if index >= len(prios):
            result.ended = f"fell off {context},{exten}"
            return result
        prio = prios[index]
        result.visited.append((context, exten))
        args = _substitute(prio.args, env)
        jump = None
        if prio.app in {"NoOp", "Log", "Verbose"}:
            pass
        elif prio.app == "Answer":
            result.answered = True
        elif prio.app == "Set":
            name, _, value = args.partition("=")
            env[name] = value
        elif prio.app == "AGI":
            result.agi.append(args)
            result.agi_on_answered.append(result.answered)
            if agi_hangup:
                result.ended = "caller hung up"
                return result
            env.update(agi_sets or {"AGISTATUS": "FAILURE"})
        elif prio.app in PLAY_APPS:
            result.played.append(split_args(args)[0])
        elif prio.app == "Dial":
            result.dialled.append(split_args(args)[0])
            env["DIALSTATUS"] = dialstatus
        elif prio.app == "Hangup":
            result.ended = f"hangup in {context}"
            return result
        elif prio.app == "Return":
            context, exten, index = stack.pop()
            prios = plan.extension(context, exten)
            continue
        elif prio.app in {"Goto", "Gosub"}:
            jump = args
        elif prio.app == "GotoIf":
            cond, _, branches = args.partition("?")
            options = [*split_args(branches, ":"), ""]
            jump = options[0] if _evaluate(cond) else options[1]
            jump = jump or None
        else:
            raise AssertionError(f"{prio.where}: the walker does not know {prio.app}")
        if jump:
            if prio.app == "Gosub":
                stack.append((context, exten, index + 1))
            context, exten, label = _resolve(jump, prio)
            prios = plan.extension(context, exten)
            index = next(i for i, p in enumerate(prios)
                         if (p.label == label) or (label.isdigit() and p.number == int(label)))
            continue
        index += 1
    raise AssertionError("dialplan loop")


GLOBALS = {"CONSENT_AGI": "agi://127.0.0.1:4573", "CONSENT_AGI_TOKEN": "s3cret-token-0123"}
DOWN = {"AGISTATUS": "FAILURE"}  # nothing listening (transcript 23)
CLOSED_EARLY = {"AGISTATUS": "SUCCESS"}  # server closed mid-flow (transcripts 19, 20)
BROKEN_RESULTS = [DOWN, CLOSED_EARLY, {"AGISTATUS": "NOTFOUND"},
                  {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": "error"},  # died mid-question
                  {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": "error", "CONSENT_APOLOGISED": "yes"},
                  {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": "opted-in"},  # not a real value
                  {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": "played"}]  # wrong route's value


def _recorded(result: str, status: str = "SUCCESS") -> dict[str, str]:
    return {"AGISTATUS": status, "CONSENT_RESULT": result, "CONSENT_EVENT_ID": "42"}


@pytest.mark.parametrize("agi", BROKEN_RESULTS, ids=lambda d: "-".join(d.values()))
def test_inbound_server_down_crashed_or_erroring_ends_in_a_polite_goodbye(
    plan: Dialplan, agi: dict[str, str]
) -> None:
    # A stale opted_in inherited from earlier on the channel must not count.
    w = walk(plan, "consent-inbound", "s", {**GLOBALS, "CONSENT_RESULT": "opted_in"}, agi)
    assert w.ended == "hangup in consent-fallback"
    told = agi.get("CONSENT_APOLOGISED") == "yes"  # the flow said "nothing recorded" itself
    apology = "consent-ivr/goodbye" if told else "consent-ivr/error"
    assert w.played == [apology]


@pytest.mark.parametrize("result", [cv.RESULT_OPTED_IN, cv.RESULT_OPTED_OUT, cv.RESULT_NO_DECISION])
@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE"])  # FAILURE: a prompt file was missing
def test_inbound_recorded_or_undecided_call_just_ends(
    plan: Dialplan, result: str, status: str
) -> None:
    w = walk(plan, "consent-inbound", "s", GLOBALS, _recorded(result, status))
    assert w.ended == "hangup in consent-inbound"
    assert w.played == []
    assert w.agi == ["agi://127.0.0.1:4573/consent?purpose=marketing-calls&linkedid=&"
                     f"answered=1&token={GLOBALS['CONSENT_AGI_TOKEN']}"]


@pytest.mark.parametrize(("context", "exten", "extra"), [
    ("consent-inbound", "s", {}),
    ("consent-transfer", "s", {"BLINDTRANSFER": "PJSIP/agent-desk-0000002a"}),  # its sub
    ("consent-outbound", "s", {"CONSENT_CAMPAIGN": "winter-fix", "CONSENT_ATTEMPT": "3"}),
])
def test_agi_says_answered_only_after_the_kit_answered(
    plan: Dialplan, context: str, exten: str, extra: dict[str, str]
) -> None:
    # answered=1 makes the flow skip its ANSWER: a URL that said it on a channel the kit
    # had not answered would play the prompts to a ringing line
    w = walk(plan, context, exten, {**GLOBALS, **extra}, _recorded(cv.RESULT_OPTED_OUT))
    assert w.agi, w
    for url, answered in zip(w.agi, w.agi_on_answered, strict=True):
        if "answered=1" in url:
            assert answered, f"{context},{exten}: {url} before any Answer()"
    assert all("answered=1" in url for url in w.agi), w.agi


def test_inbound_without_server_address_does_not_call_agi(plan: Dialplan) -> None:
    w = walk(plan, "consent-inbound", "s", {"CONSENT_AGI": ""})
    assert w.agi == [] and w.ended == "hangup in consent-fallback"


def test_caller_hanging_up_during_agi_leaves_only_h(plan: Dialplan) -> None:
    w = walk(plan, "consent-inbound", "s", GLOBALS, agi_hangup=True)
    assert w.ended == "caller hung up" and w.played == []


OUTBOUND = {**GLOBALS, "CONSENT_CAMPAIGN": "winter-fix", "CONSENT_ATTEMPT": "3"}


@pytest.mark.parametrize("result", ["played", "opted_out", "opted_in", "no_decision"])
def test_outbound_finished_marketing_route_just_ends(plan: Dialplan, result: str) -> None:
    agi = {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": result}
    w = walk(plan, "consent-outbound", "s", OUTBOUND, agi)
    assert w.ended == "hangup in consent-outbound" and w.played == []
    assert w.agi == ["agi://127.0.0.1:4573/marketing?campaign=winter-fix&attempt=3&answered=1"
                     f"&token={GLOBALS['CONSENT_AGI_TOKEN']}"]


@pytest.mark.parametrize(
    "agi",
    [*BROKEN_RESULTS[:4], {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": "refused",
                           "CONSENT_REFUSAL_REASON": "no_consent"},
     {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": "refused"}],
    ids=lambda d: "-".join(d.values()),
)
def test_outbound_refused_or_broken_identifies_and_says_goodbye_never_marketing(
    plan: Dialplan, agi: dict[str, str]
) -> None:
    w = walk(plan, "consent-outbound", "s", {**OUTBOUND, "CONSENT_RESULT": "played"}, agi)
    assert w.ended == "hangup in consent-fallback"
    assert w.played == ["consent-ivr/identify", "consent-ivr/goodbye"]


def test_outbound_not_from_the_dialer_runs_no_agi(plan: Dialplan) -> None:
    w = walk(plan, "consent-outbound", "s", GLOBALS)
    assert w.agi == [] and w.played == ["consent-ivr/identify", "consent-ivr/goodbye"]


@pytest.mark.parametrize(
    ("env", "dialled"),
    [({"CONSENT_RETURN_TO": "Local/s@agent-queue"}, "Local/s@agent-queue"),
     ({"BLINDTRANSFER": "PJSIP/6001-0000002a"}, "PJSIP/6001"),
     ({"BLINDTRANSFER": "PJSIP/agent-desk-0000002a"}, "PJSIP/agent-desk"),
     ({"CONSENT_RETURN_TO": "PJSIP/6003", "BLINDTRANSFER": "PJSIP/6001-0000002a"}, "PJSIP/6003")],
)
@pytest.mark.parametrize("agi", [_recorded("opted_in"), _recorded("opted_out"), *BROKEN_RESULTS[:4],
                                 {"AGISTATUS": "SUCCESS", "CONSENT_RESULT": "no_decision"}],
                         ids=lambda d: "-".join(d.values()))
def test_transfer_always_returns_the_caller_to_the_agent(
    plan: Dialplan, env: dict[str, str], dialled: str, agi: dict[str, str]
) -> None:
    w = walk(plan, "consent-transfer", "s", {**GLOBALS, **env}, agi, dialstatus="ANSWER")
    assert w.dialled == [dialled]
    assert w.ended == "hangup in consent-transfer"
    recorded = agi.get("CONSENT_RESULT") in {"opted_in", "opted_out"}
    # The flow says "we will now return you" after a recorded choice; otherwise we do.
    assert ("consent-ivr/transfer-return" in w.played) != recorded
    marketing = ("consent-ivr/campaign", "consent-ivr/marketing")
    assert all(not p.startswith(marketing) for p in w.played)


def test_transfer_with_nowhere_to_return_says_goodbye(plan: Dialplan) -> None:
    w = walk(plan, "consent-transfer", "s", GLOBALS, _recorded("opted_in"))
    assert w.dialled == [] and w.played == ["consent-ivr/goodbye"]
    w = walk(plan, "consent-transfer", "s", {**GLOBALS, "CONSENT_RETURN_TO": "PJSIP/6001"},
             _recorded("opted_in"), dialstatus="NOANSWER")
    assert w.dialled == ["PJSIP/6001"] and w.played[-1] == "consent-ivr/goodbye"


# ----------------------------------------------------------------------------- prompts


def test_prompts_match_manifest_hashes_and_format() -> None:
    assert check_prompts(ROOT) == []


def test_manifest_covers_every_catalogue_prompt_in_every_language() -> None:
    catalogue = make_prompts_module(ROOT).load_catalogue(ROOT)
    index = prompt_index(ROOT)
    for prompt_id, texts in catalogue["prompts"].items():
        for lang in texts:
            assert (prompt_id, lang) in index
        assert set(texts) == {"en", "cy"}, f"{prompt_id}: every prompt in en and cy"
    manifest = load_manifest(ROOT)
    assert manifest["organisation"] == catalogue["vars"]["organisation"]
    assert manifest["freephone"] == catalogue["vars"]["freephone"]


def test_wav_layout_is_what_asterisk_looks_up() -> None:
    for entry in load_manifest(ROOT)["prompts"]:
        assert entry["file"] == f"{entry['lang']}/consent-ivr/{entry['id']}.wav"


def test_every_prompt_the_dialplan_plays_exists_in_every_language(plan: Dialplan) -> None:
    index = prompt_index(ROOT)
    for prio in plan.priorities():
        if prio.app in PLAY_APPS:
            prompt_id = split_args(prio.args)[0].removeprefix("consent-ivr/")
            for lang in ("en", "cy"):
                assert (prompt_id, lang) in index, f"{prio.where}: no {lang} {prompt_id}"


def _flow_prompt_ids() -> set[str]:
    """Prompt ids the flows name: PROMPTS tuples and literal play/ask/get(...) arguments."""
    ids = set()
    for path in sorted((ROOT / "agi" / "calls").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                named = any(isinstance(t, ast.Name) and t.id == "PROMPTS" for t in targets)
                if named and node.value:
                    ids |= {e.value for e in ast.walk(node.value)
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"play", "ask", "path_for"} and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                ids.add(node.args[0].value)
    return ids


def test_every_prompt_a_flow_names_exists_in_every_language() -> None:
    ids = _flow_prompt_ids()
    assert {"identify", "confirm-opt-in", "marketing-identify"} <= ids, "flow prompt scan broke"
    # The consent flow asks question-<purpose>; the dialplan asks for marketing-calls.
    ids.add("question-marketing-calls")
    index = prompt_index(ROOT)
    missing = sorted((i, lang) for i in ids for lang in ("en", "cy") if (i, lang) not in index)
    assert not missing, f"flows play prompts the manifest lacks: {missing}"


# --------------------------------------------------------------------- AMI, PJSIP, secrets


def test_ami_user_has_exactly_the_least_privilege() -> None:
    conf = parse_conf(DIALPLAN / "manager_consent.conf.template")
    [user] = conf.sections
    assert user.name == "consent-dialer"
    assert {p.strip() for v in user.get("read") for p in v.split(",")} == {"call"}
    assert {p.strip() for v in user.get("write") for p in v.split(",")} == {
        "originate",
        "reporting",  # CoreShowChannels after a reconnect (agi/outbound/ami.py, dialer.py)
    }
    keys = [i.key for i in user.items]
    assert keys.index("deny") < keys.index("permit"), "deny all first, then permit"
    assert user.get("deny") == ["0.0.0.0/0.0.0.0"]
    assert user.get("permit") == ["${CONSENT_AMI_PERMIT}"]
    assert user.get("secret") == ["${CONSENT_IVR_AMI_SECRET}"]
    assert user.get("eventfilter") == [
        "Event: OriginateResponse", "Event: Newchannel", "Event: Hangup"
    ]


def test_pjsip_endpoints_use_rfc4733_and_land_in_existing_contexts(plan: Dialplan) -> None:
    conf = parse_conf(DIALPLAN / "pjsip_consent.conf.template")
    templates = {s.name: s for s in conf.sections if s.is_template}

    def resolved(section: Any) -> dict[str, str]:
        values: dict[str, str] = {}
        for option in section.options:
            if option in templates:
                values.update({i.key: i.value for i in templates[option].items})
        values.update({i.key: i.value for i in section.items})
        return values

    objects = [(s.name, resolved(s)) for s in conf.sections if not s.is_template]
    endpoints = {name: v for name, v in objects if v.get("type") == "endpoint"}
    assert set(endpoints) == {"6001", "6002", "trunk"}
    for name, values in endpoints.items():
        assert values["dtmf_mode"] == "rfc4733", name
        assert values["context"] in plan.contexts, name
    auths = {name for name, v in objects if v.get("type") == "auth"}
    assert {"6001", "6002", "trunk"} <= auths
    assert endpoints["trunk"]["context"] == "consent-from-trunk"


_PLACEHOLDER = re.compile(r"^\$\{[A-Z0-9_]+\}$")
_SECRET_KEY = re.compile(r"(secret|password|token)", re.I)


def _conf_files() -> list[Path]:
    return sorted([*DIALPLAN.iterdir(), *ASTERISK_ETC.iterdir()])


def test_no_secret_is_committed_in_asterisk_configuration() -> None:
    checked = 0
    for path in _conf_files():
        for section in parse_conf(path).sections:
            for item in section.items:
                if _SECRET_KEY.search(item.key) and not item.arrow:
                    checked += 1
                    assert _PLACEHOLDER.match(item.value), (
                        f"{path.name}:{item.line}: {item.key} must come from the environment"
                    )
    assert checked >= 5


def test_env_example_has_no_real_secrets_and_env_is_not_tracked() -> None:
    env = _env_example()
    for name, value in env.items():
        if _SECRET_KEY.search(name):
            assert value == "CHANGE-ME", f".env.example {name} must be a placeholder"
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert tracked == ""


def _template_vars(path: Path) -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+)\}", path.read_text(encoding="utf-8")))


def test_asterisk_entrypoint_renders_every_template_with_its_variables() -> None:
    entrypoint = (ROOT / "docker" / "asterisk" / "entrypoint.sh").read_text(encoding="utf-8")
    compose_env = set(_compose()["services"]["asterisk"]["environment"])
    defaulted = set(re.findall(r'^: "\$\{([A-Z0-9_]+):=', entrypoint, re.M))
    templates = sorted(DIALPLAN.glob("*.template"))
    assert len(templates) == 3
    for template in templates:
        lines = entrypoint.splitlines()
        index = next(i for i, text in enumerate(lines) if template.name in text)
        envsubst = lines[index - 1] + lines[index]
        listed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", envsubst))
        needed = _template_vars(template) - {"VAR"}
        # Comments in the templates show the envsubst command itself: same variables.
        assert needed <= listed, f"{template.name}: not substituted: {needed - listed}"
        unset = needed - compose_env - defaulted
        assert not unset, f"{template.name}: compose does not set {unset}"
    for conf in ASTERISK_ETC.glob("*.conf"):
        assert _template_vars(conf) <= {"CONSENT_LOCAL_NET", "CONSENT_EXTERNAL_IP"}, conf.name
    for script in ("asterisk/entrypoint.sh", "consent-ivr/entrypoint.sh"):
        assert (ROOT / "docker" / script).stat().st_mode & stat.S_IXUSR, script


def test_asterisk_ports_match_pjsip_and_rtp_configuration() -> None:
    ports = _compose()["services"]["asterisk"]["ports"]
    assert "5060:5060/udp" in ports
    transport = parse_conf(ASTERISK_ETC / "pjsip.conf").named("transport-udp")[0]
    assert transport.get("bind") == ["0.0.0.0:5060"]
    rtp = parse_conf(ASTERISK_ETC / "rtp.conf").named("general")[0]
    start, end = int(rtp.get("rtpstart")[0]), int(rtp.get("rtpend")[0])
    assert f"{start}-{end}:{start}-{end}/udp" in ports
    top = ("extensions.conf", "pjsip.conf", "manager.conf")
    includes = {f: parse_conf(ASTERISK_ETC / f).includes for f in top}
    assert includes["extensions.conf"] == ["consent_globals.conf", "extensions_consent.conf",
                                           "extensions_consent_demo.conf"]
    assert includes["pjsip.conf"] == ["pjsip_consent.conf"]
    assert includes["manager.conf"] == ["manager_consent.conf"]


# ----------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def _env_example() -> dict[str, str]:
    env = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def test_compose_names_only_things_that_exist() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgres", "asterisk", "consent-ivr", "dialer", "softphone",
                             "prometheus", "grafana"}  # the last two: profile observability
    named_volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = ROOT / build["context"]
            assert context.is_dir(), f"{name}: build context {context}"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
        else:  # an image another service builds, or an official image pinned to a major tag
            built = {s.get("image") for s in services.values() if s.get("build")}
            assert svc["image"] in built or re.fullmatch(r"[a-z]+:\d+", svc["image"]) or (
                svc.get("profiles") == ["observability"]
                and re.fullmatch(r"[a-z]+/[a-z-]+:v?\d+\.\d+\.\d+", svc["image"])
            ), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: mount source {source}"
            else:
                assert source in named_volumes, f"{name}: volume {source} not declared"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for network in svc.get("networks", []):
            assert network in compose["networks"]
    mounted = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert named_volumes <= mounted


def test_compose_variables_are_all_documented_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z0-9_]+)(?:[:?-][^}]*)?\}", text))
    documented = set(_env_example())
    assert used - documented == set(), "add these to .env.example"
    assert documented - used == set(), ".env.example lists variables nothing uses"


def test_compose_service_wiring() -> None:
    services = _compose()["services"]
    assert "healthcheck" in services["postgres"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["consent-ivr"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["dialer"]["depends_on"]["consent-ivr"]["condition"] == "service_healthy"
    assert services["dialer"]["command"] == ["dialer"]
    assert services["softphone"]["profiles"] == ["tools"]
    ivr_env = services["consent-ivr"]["environment"]
    # Bound to 0.0.0.0 in a container: only the compose network, and only with the token.
    assert ivr_env["CONSENT_IVR_ALLOW_FROM"] == "${CONSENT_NET_SUBNET}"
    assert ivr_env["CONSENT_IVR_AGI_TOKEN"].startswith("${CONSENT_IVR_AGI_TOKEN:?")
    assert services["asterisk"]["environment"]["CONSENT_AGI"] == "agi://consent-ivr:4573"
    entrypoint = (ROOT / "docker" / "consent-ivr" / "entrypoint.sh").read_text(encoding="utf-8")
    assert "consent-ivr migrate" in entrypoint and "consent-ivr serve --host 0.0.0.0" in entrypoint


def test_compose_consent_ivr_settings_are_real_settings() -> None:
    from agi.ops import config
    fields = {f.upper() for f in config.Settings.__dataclass_fields__}
    services = _compose()["services"]
    for name in ("consent-ivr", "dialer"):
        for key in services[name]["environment"]:
            if key.startswith("CONSENT_IVR_"):
                assert key.removeprefix("CONSENT_IVR_") in fields, f"{name}: {key} is not a setting"
    dockerfile = (ROOT / "docker" / "consent-ivr" / "Dockerfile").read_text(encoding="utf-8")
    for key in re.findall(r"(CONSENT_IVR_[A-Z_]+)=", dockerfile):
        assert key.removeprefix("CONSENT_IVR_") in fields, f"Dockerfile: {key} is not a setting"


def _stages(dockerfile: str) -> list[list[str]]:
    """The instructions of each ``FROM`` stage, continuation lines joined."""
    stages: list[list[str]] = []
    for line in dockerfile.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_consent_ivr_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "docker" / "consent-ivr" / "Dockerfile").read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} is missing"


def test_consent_ivr_image_installs_the_built_wheel_and_runs_unprivileged() -> None:
    """Multi-stage: build the wheel, install only it; no source tree in the runtime image."""
    stages = _stages((ROOT / "docker" / "consent-ivr" / "Dockerfile").read_text("utf-8"))
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    assert build[0].startswith("FROM python:") and build[0].endswith(" AS build")
    assert any("python -m build --wheel --outdir /dist" in i for i in build if i.startswith("RUN"))
    assert runtime[0].startswith("FROM python:3.") and "-slim" in runtime[0]
    copies = [i for i in runtime if i.startswith(("COPY", "ADD"))]
    from_build = [i for i in copies if "--from=build" in i]
    assert len(from_build) == 1 and "/dist/" in from_build[0]
    # from the context only the entry point: never agi/, db/ or sounds/
    assert [i.split()[1] for i in copies if "--from=" not in i] == [
        "docker/consent-ivr/entrypoint.sh"]
    installs = [i for i in runtime if i.startswith("RUN") and "pip install" in i]
    assert len(installs) == 1 and re.search(r"pip install /tmp/dist/consent_ivr-\*\.whl",
                                            installs[0])
    assert not any(" -e " in i or "gcc" in i or "build-essential" in i for i in runtime)
    users = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert any(i.startswith("RUN useradd --system") and users[-1] in i for i in runtime)
    assert "ENV CONSENT_IVR_DATA_DIR=/var/lib/consent-ivr" in runtime
    assert not any("CONSENT_IVR_SOUNDS_DIR" in i for i in runtime), "prompts come in the wheel"


def test_compose_runs_the_wheel_image_with_its_data_home_on_a_volume() -> None:
    services = _compose()["services"]
    ivr = services["consent-ivr"]
    assert ivr["build"] == {"context": ".", "dockerfile": "docker/consent-ivr/Dockerfile"}
    assert services["dialer"]["image"] == ivr["image"] and "build" not in services["dialer"]
    for name in ("consent-ivr", "dialer"):
        mounts = {v.split(":")[1] for v in services[name].get("volumes", [])}
        assert "/var/lib/consent-ivr" in mounts, f"{name}: data home not on a volume"
        assert not any(v.startswith((".", "/")) for v in services[name].get("volumes", [])), (
            f"{name}: the image must not need the source tree mounted")


# -------------------------------------------------------------------------------- SIPp


def _load_pcap_module() -> Any:
    path = ROOT / "sipp" / "make_dtmf_pcap.py"
    spec = importlib.util.spec_from_file_location("make_dtmf_pcap", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sipp_scenario_is_well_formed_and_sends_rfc4733_dtmf() -> None:
    text = (ROOT / "sipp" / "consent_call.xml").read_text(encoding="ISO-8859-1")
    tree = ET.fromstring(text.encode("ISO-8859-1"))
    assert tree.tag == "scenario"
    sdp = "".join(e.text or "" for e in tree.iter("send"))
    assert "a=rtpmap:101 telephone-event/8000" in sdp
    assert "[authentication]" in sdp
    block = text.split("<!-- BEGIN DTMF -->")[1].split("<!-- END DTMF -->")[0]
    steps = ET.fromstring(f"<b>{block}</b>")
    pcaps = [e.get("play_pcap_audio") for e in steps.iter("exec")]
    assert pcaps == ["dtmf/01-1.pcap", "dtmf/02-1.pcap"]
    assert [e.tag for e in steps] == ["pause", "nop", "pause", "nop"]
    pcap = _load_pcap_module()
    stamps = []
    for name in pcaps:
        events = pcap.read_events(ROOT / "sipp" / name)
        assert {e[0] for e in events} == {101}, "payload type must match the SDP"
        assert {e[1] for e in events} == {1}, "event 1 = key 1"
        assert events[-1][2] and not events[0][2], "ends with the end bit"
        stamps.append(events[0][4])
    assert len(set(stamps)) == 2, "the same key twice needs two RTP timestamps"
    ET.parse(ROOT / "sipp" / "selftest_uas.xml")


def test_committed_pcaps_are_what_the_generator_writes(tmp_path: Path) -> None:
    pcap = _load_pcap_module()
    for path in pcap.write_sequence(pcap.parse_digits("1,1"), tmp_path):
        assert path.read_bytes() == (ROOT / "sipp" / "dtmf" / path.name).read_bytes()
    with pytest.raises(ValueError):
        pcap.parse_digits("1,x")


def test_softphone_wrapper_is_the_container_entry_point() -> None:
    call = ROOT / "sipp" / "call.sh"
    assert call.stat().st_mode & stat.S_IXUSR
    svc = _compose()["services"]["softphone"]
    assert "./sipp:/sipp:ro" in svc["volumes"]
    dockerfile = (ROOT / "docker" / "softphone" / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["/bin/sh", "/sipp/call.sh"]' in dockerfile
    assert "sip-tester" in dockerfile and "python3" in dockerfile
    subprocess.run(["sh", "-n", str(call)], check=True)
    subprocess.run(["sh", "-n", str(ROOT / "docker" / "asterisk" / "entrypoint.sh")], check=True)
    subprocess.run(["sh", "-n", str(ROOT / "docker" / "consent-ivr" / "entrypoint.sh")], check=True)


def test_template_comments_name_no_placeholder() -> None:
    # envsubst also substitutes inside comments: a placeholder there would copy the secret.
    for template in DIALPLAN.glob("*.template"):
        for number, line in enumerate(template.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith(";"):
                assert "$" not in line, f"{template.name}:{number}"


def test_asterisk_entrypoint_renders_loadable_configuration(tmp_path: Path) -> None:
    if shutil.which("envsubst") is None:
        pytest.skip("envsubst (gettext-base) not installed")
    kit, etc, sounds = tmp_path / "kit", tmp_path / "etc", tmp_path / "sounds"
    for path in (kit, etc, sounds):
        path.mkdir()
    shutil.copytree(DIALPLAN, kit / "dialplan")
    shutil.copytree(ASTERISK_ETC, kit / "asterisk-etc")
    for lang in ("en", "cy"):
        shutil.copytree(ROOT / "sounds" / lang, kit / "sounds" / lang)
    script = (ROOT / "docker" / "asterisk" / "entrypoint.sh").read_text(encoding="utf-8")
    script = (script.replace("KIT=/opt/consent-ivr", f"KIT={kit}")
              .replace("ETC=/etc/asterisk", f"ETC={etc}")
              .replace("SOUNDS=/usr/share/asterisk/sounds", f"SOUNDS={sounds}")
              .replace('chown root:asterisk "$ETC"/*.conf', ": no asterisk group here"))
    (tmp_path / "entrypoint.sh").write_text(script, encoding="utf-8")
    secrets = {"CONSENT_IVR_AMI_SECRET": "ami-s3cret-0123456789",
               "CONSENT_SIP_6001_PASSWORD": "pw6001x", "CONSENT_SIP_6002_PASSWORD": "pw6002x",
               "CONSENT_IVR_AGI_TOKEN": "tok-0123456789abcdef"}
    env = {"PATH": "/usr/bin:/bin", **secrets, "CONSENT_AMI_PERMIT": "172.30.57.0/24",
           "CONSENT_AGI": "agi://consent-ivr:4573", "CONSENT_LOCAL_NET": "172.30.57.0/24",
           "CONSENT_EXTERNAL_IP": "127.0.0.1"}
    empty = subprocess.run(["sh", str(tmp_path / "entrypoint.sh"), "true"],
                           env={"PATH": env["PATH"]}, capture_output=True, text=True)
    assert empty.returncode == 64 and "is empty" in empty.stderr, "must refuse without secrets"
    subprocess.run(["sh", str(tmp_path / "entrypoint.sh"), "true"], env=env, check=True)
    rendered = "".join(p.read_text(encoding="utf-8") for p in sorted(etc.glob("*.conf")))
    for value in secrets.values():
        assert rendered.count(value) >= 1
    for conf in etc.glob("*.conf"):
        parsed = parse_conf(conf)  # every rendered file still parses
        for section in parsed.sections:
            for item in section.items:
                assert "${CONSENT" not in item.value or conf.name.startswith("extensions"), (
                    f"{conf.name}:{item.line}: {item.value} left unrendered"
                )
    [user] = parse_conf(etc / "manager_consent.conf").sections
    assert user.get("secret") == [secrets["CONSENT_IVR_AMI_SECRET"]]
    assert (sounds / "cy" / "consent-ivr" / "identify.wav").is_file()


def test_softphone_key_timings_fit_the_prompts_of_each_language() -> None:
    """call.sh's default waits press after the question, then after the statement (which
    plays whole) and into the confirmation: a gap shorter than the statement would put the
    second key into it, where it is ignored, and the demo call would never opt in."""
    text = (ROOT / "sipp" / "call.sh").read_text(encoding="utf-8")
    manifest = json.loads((ROOT / "sounds" / "manifest.json").read_text(encoding="utf-8"))
    secs = {(p["id"], p["lang"]): p["samples"] / 8000 for p in manifest["prompts"]}
    timeout_s = 5.0  # CONSENT_IVR_DIGIT_TIMEOUT_MS default: the wait after each prompt
    for exten, lang in (("7001", "cy"), (r"\*", "en")):
        m = re.search(exten + r"\)\s+first_default=(\d+) gap_default=(\d+)", text)
        assert m, f"call.sh has no defaults for {exten}"
        first, gap = int(m[1]) / 1000, int(m[2]) / 1000
        question_end = 0.6 + secs[("identify", lang)] + secs[("question-marketing-calls", lang)]
        assert question_end < first < question_end + timeout_s, (lang, first)
        confirm_end = secs[("statement-marketing-calls", lang)] + secs[("confirm-opt-in", lang)]
        assert confirm_end < gap < confirm_end + timeout_s, (lang, gap)
