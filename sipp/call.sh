#!/bin/sh
# Place one scripted call to the consent line and press DTMF keys (RFC 4733).
#
#   sipp/call.sh DIGITS [HOST[:PORT]]
#
#   DIGITS  comma-separated keys, pressed one per step: 1,1 (agree + confirm), 2 (refuse),
#           1,5 (agree, then cancel), "" (press nothing: the no-input path)
#   HOST    the Asterisk running the kit (default $SIPP_TARGET, else 127.0.0.1), port 5060
#
# Environment (the compose softphone service sets the first three):
#   SIPP_PASSWORD (or CONSENT_SIP_6002_PASSWORD)  password of the calling endpoint (required)
#   SIPP_USER       calling endpoint, default 6002
#   SIPP_EXTEN      extension to dial, default 7000 (7001: the Welsh consent line)
#   SIPP_FIRST_DTMF_MS  wait before the first key (default: until the question has been asked)
#   SIPP_DTMF_GAP_MS    wait between keys (default: until the confirmation has been asked)
#   SIPP_LOCAL_IP       local address for SIP and RTP, if SIPp's guess is wrong
# Exit status: SIPp's (0 = the call completed as scripted).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
digits=${1-1,1}
target=${2:-${SIPP_TARGET:-127.0.0.1}}
user=${SIPP_USER:-6002}
exten=${SIPP_EXTEN:-7000}
password=${SIPP_PASSWORD:-${CONSENT_SIP_6002_PASSWORD:-}}
if [ -z "$password" ]; then
    echo "call.sh: set SIPP_PASSWORD to the password of endpoint $user" >&2
    exit 2
fi
# Prompt lengths differ by language (sounds/manifest.json): press just after the question,
# then just after the confirmation instruction (the purpose's statement plays whole between
# them; a key pressed during it is recorded as ignored and counts for nothing).
case "$exten" in
    7001) first_default=41000 gap_default=31000 ;;
    *)    first_default=36500 gap_default=26000 ;;
esac
first=${SIPP_FIRST_DTMF_MS:-$first_default}
gap=${SIPP_DTMF_GAP_MS:-$gap_default}
case "$target" in *:*) ;; *) target="$target:5060" ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
python3 "$here/make_dtmf_pcap.py" "$digits" "$work/dtmf" > "$work/pcaps"

# The scenario with its DTMF block replaced: one pause + one pcap per key.
{
    pause=$first
    while read -r pcap; do
        printf '  <pause milliseconds="%s"/>\n' "$pause"
        printf '  <nop><action><exec play_pcap_audio="%s"/></action></nop>\n' "$pcap"
        pause=$gap
    done < "$work/pcaps"
} > "$work/block"
awk -v block="$work/block" '
    /<!-- BEGIN DTMF -->/ { print; while ((getline line < block) > 0) print line; skip = 1; next }
    /<!-- END DTMF -->/   { skip = 0 }
    !skip { print }
' "$here/consent_call.xml" > "$work/consent_call.xml"

set -- -sf "$work/consent_call.xml" -s "$exten" -key caller "$user" -au "$user" -ap "$password" \
       -m 1 -l 1 -timeout 240s -timeout_error -nostdin -trace_err -error_file "$work/errors.log"
if [ -n "${SIPP_LOCAL_IP:-}" ]; then
    set -- "$@" -i "$SIPP_LOCAL_IP" -mi "$SIPP_LOCAL_IP"
fi
echo "call.sh: calling $exten at $target as $user, keys: ${digits:-none}" >&2
status=0
cd "$work"
sipp "$@" "$target" || status=$?
if [ "$status" -ne 0 ] && [ -s "$work/errors.log" ]; then
    cat "$work/errors.log" >&2
fi
exit "$status"
