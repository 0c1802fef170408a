"""Channel variables shared between the flows and ``dialplan/``.

Defined once here; the dialplan branches on exactly these names and the static
kit test (``tests/static``) checks that every variable the dialplan reads is
one a flow sets, and the other way round.
"""

from __future__ import annotations

# Set by every flow before it ends (the dialplan must not trust AGISTATUS alone:
# real Asterisk reports SUCCESS even when the server closed mid-flow).
CONSENT_RESULT = "CONSENT_RESULT"
# Ledger id of the consent event recorded on this call (empty when none).
CONSENT_EVENT_ID = "CONSENT_EVENT_ID"
# Marketing route: why marketing audio was refused (empty when played).
CONSENT_REFUSAL_REASON = "CONSENT_REFUSAL_REASON"
# "yes" once the flow itself has told the caller that nothing was recorded (the error
# prompt). Unset, the dialplan says it: CONSENT_RESULT=error alone cannot tell a flow that
# apologised from a server killed mid-question (both leave "error", both SUCCESS).
CONSENT_APOLOGISED = "CONSENT_APOLOGISED"

# Set by the dialer on originated channels (AMI Originate ``Variable:``) and read
# by the ``consent-outbound`` dialplan context to build the marketing AGI URL.
CONSENT_CAMPAIGN = "CONSENT_CAMPAIGN"
CONSENT_ATTEMPT = "CONSENT_ATTEMPT"

# Values of CONSENT_RESULT.
RESULT_OPTED_IN = "opted_in"
RESULT_OPTED_OUT = "opted_out"
RESULT_NO_DECISION = "no_decision"
RESULT_ERROR = "error"
RESULT_PLAYED = "played"  # marketing route: campaign audio played to the end
RESULT_REFUSED = "refused"  # marketing route: the gate refused, nothing played

CONSENT_RESULTS = frozenset(
    {
        RESULT_OPTED_IN,
        RESULT_OPTED_OUT,
        RESULT_NO_DECISION,
        RESULT_ERROR,
        RESULT_PLAYED,
        RESULT_REFUSED,
    }
)

# Every variable a flow may set on the channel.
SET_BY_FLOWS = frozenset(
    {CONSENT_RESULT, CONSENT_EVENT_ID, CONSENT_REFUSAL_REASON, CONSENT_APOLOGISED}
)
# Every variable the dialer sets on originated channels.
SET_BY_DIALER = frozenset({CONSENT_CAMPAIGN, CONSENT_ATTEMPT})
