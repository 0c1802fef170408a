"""The campaign rows (agi.outbound.campaigns) on real PostgreSQL."""

from __future__ import annotations

import pytest

from agi.outbound.model import CampaignError
from agi.outbound.stores import OutboundStores
from tests.campaign_helpers import make_campaign


async def test_create_show_and_reject_bad_campaigns(stores: OutboundStores) -> None:
    c = await make_campaign(stores.campaigns)
    again = await stores.campaigns.get_campaign("winter")
    assert again is not None and again.id == c.id and again.dial_string("+447700900123") == (
        "PJSIP/+447700900123@trunk"
    )
    with pytest.raises(CampaignError, match="already exists"):
        await make_campaign(stores.campaigns)
    with pytest.raises(CampaignError, match="unknown policy profile"):
        await make_campaign(stores.campaigns, name="x1", profile="uk-lax")
    with pytest.raises(CampaignError, match="caller ID"):
        await make_campaign(stores.campaigns, name="x2", caller_id="+449098790000")  # premium rate
    with pytest.raises(CampaignError, match=r"\{number\}"):
        await make_campaign(stores.campaigns, name="x3", dial_template="PJSIP/trunk")
    with pytest.raises(CampaignError, match="ring time"):
        await make_campaign(stores.campaigns, name="x4", ring_seconds=10)
    assert [x.name for x in await stores.campaigns.list_campaigns()] == ["winter"]
