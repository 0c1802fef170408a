#!/bin/sh
# serve:  apply the database migrations, then run the FastAGI server on all interfaces
#         (inside the compose network; CONSENT_IVR_ALLOW_FROM and CONSENT_IVR_AGI_TOKEN
#         say who may connect).
# other:  run that consent-ivr subcommand as is (dialer, report, ...).
set -eu
if [ "${1:-serve}" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    consent-ivr migrate
    exec consent-ivr serve --host 0.0.0.0 "$@"
fi
exec consent-ivr "$@"
