-- 011: campaigns may re-confirm the opt-in on their outbound calls (issue 3 §2).
-- With reconfirm on, a callee who already holds an opt-in hears, after the identification and
-- the opt-out offer and before the campaign audio, "To keep receiving them, press 1. To stop
-- them, press 9.": 1 records a fresh opt-in (method ivr_outbound_reconfirm, already allowed by
-- 001), 9 is the opt-out, silence leaves the existing opt-in as it was.
ALTER TABLE campaign ADD COLUMN reconfirm boolean NOT NULL DEFAULT false;
