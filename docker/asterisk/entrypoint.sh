#!/bin/sh
# Install the consent-ivr kit into /etc/asterisk and the prompts into Asterisk's sounds
# directory, render the templates from the environment, then exec Asterisk.
# Refuses to start with an empty secret: there are no default passwords.
set -eu

KIT=/opt/consent-ivr
ETC=/etc/asterisk
SOUNDS=/usr/share/asterisk/sounds

for var in CONSENT_IVR_AMI_SECRET CONSENT_SIP_6001_PASSWORD CONSENT_SIP_6002_PASSWORD \
           CONSENT_AMI_PERMIT CONSENT_AGI CONSENT_LOCAL_NET CONSENT_EXTERNAL_IP; do
    eval "value=\${$var:-}"
    if [ -z "$value" ]; then
        echo "consent-asterisk: $var is empty; set it in .env (see .env.example)" >&2
        exit 64
    fi
done
# The trunk is only an example; placeholders keep the PJSIP objects loadable without one.
# An address, not a name: Asterisk 22 refuses the trunk's identify object when its match
# does not resolve (seen with trunk.invalid). 192.0.2.1 is TEST-NET-1 (RFC 5737): it
# matches no real peer and nothing is ever sent to it (the trunk aor has no qualify).
: "${CONSENT_TRUNK_HOST:=192.0.2.1}"
: "${CONSENT_TRUNK_USERNAME:=consent}"
# Asterisk 22 refuses an auth object without a password, dropping the trunk: an unused
# example trunk gets a random one (never a default anybody could guess).
: "${CONSENT_TRUNK_PASSWORD:=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')}"
: "${CONSENT_IVR_AGI_TOKEN:=}"
export CONSENT_TRUNK_HOST CONSENT_TRUNK_USERNAME CONSENT_TRUNK_PASSWORD CONSENT_IVR_AGI_TOKEN

# Top-level files from the image: a clean, small configuration instead of the samples.
for f in "$KIT"/asterisk-etc/*.conf; do
    envsubst '${CONSENT_LOCAL_NET} ${CONSENT_EXTERNAL_IP}' < "$f" > "$ETC/$(basename "$f")"
done
# The kit, exactly as an admin would #include it.
cp "$KIT/dialplan/extensions_consent.conf" "$KIT/dialplan/extensions_consent_demo.conf" "$ETC/"
envsubst '${CONSENT_AGI} ${CONSENT_IVR_AGI_TOKEN}' \
    < "$KIT/dialplan/consent_globals.conf.template" > "$ETC/consent_globals.conf"
envsubst '${CONSENT_SIP_6001_PASSWORD} ${CONSENT_SIP_6002_PASSWORD} ${CONSENT_TRUNK_HOST} ${CONSENT_TRUNK_USERNAME} ${CONSENT_TRUNK_PASSWORD}' \
    < "$KIT/dialplan/pjsip_consent.conf.template" > "$ETC/pjsip_consent.conf"
envsubst '${CONSENT_IVR_AMI_SECRET} ${CONSENT_AMI_PERMIT}' \
    < "$KIT/dialplan/manager_consent.conf.template" > "$ETC/manager_consent.conf"
chown root:asterisk "$ETC"/*.conf
chmod 0640 "$ETC"/*.conf

# Prompts: sounds/<lang>/consent-ivr/*.wav -> <astdatadir>/sounds/<lang>/consent-ivr/.
# Copied (not bind-mounted) so a symlinked sounds/<lang> in the package cannot get in the way.
for langdir in "$KIT"/sounds/*/consent-ivr; do
    lang=$(basename "$(dirname "$langdir")")
    mkdir -p "$SOUNDS/$lang/consent-ivr"
    cp "$langdir"/*.wav "$SOUNDS/$lang/consent-ivr/"
done

exec "$@"
