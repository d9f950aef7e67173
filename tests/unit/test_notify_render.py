"""render(): every message says what happened, where, since when, and how to acknowledge."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ioc.alerts.notify import NotifyConfig, notification_rows, render, targets_for

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 1, 37, tzinfo=UTC)  # 08:37 in Hải Phòng


def incident(members: int = 3, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": 42, "title": "Mains power lost at 40 BTS", "severity": "major", "state": "open",
        "category": "power", "district": "KA", "district_name": "Kiến An",
        "started_at": "2024-05-01T01:12:00+00:00", "updated_at": "2024-05-01T01:30:00+00:00",
        "acked_by": None, "assignee": None, "member_count": members, "level": None,
        "members": [{"alert_id": i, "device_id": f"bts-ka-{i:03d}", "kind": "bts", "title": "Mains power lost",
                     "severity": "major", "started_at": "2024-05-01T01:12:00+00:00",
                     "explanation": "mains_ok=0 for 3 readings"} for i in range(members)],
    }
    doc.update(over)
    return doc


def test_firing_subject_and_body_answer_what_where_when_how() -> None:
    r = render(incident(), "firing", "https://ioc.example.vn/", now=NOW, tz="Asia/Ho_Chi_Minh")
    assert r.subject == "[MAJOR] Mains power lost at 40 BTS in Kiến An (KA) — since 08:12 UTC+7 (#42)"
    assert "What:  Mains power lost at 40 BTS (power)" in r.text
    assert "Where: Kiến An (KA)" in r.text
    assert "Since: 2024-05-01 08:12 UTC+7 (25 min ago)" in r.text
    assert "https://ioc.example.vn/ops#incident/42" in r.text
    assert "POST https://ioc.example.vn/api/incidents/42/ack" in r.text
    assert "bts-ka-002 bts: Mains power lost since 08:12 — mains_ok=0 for 3 readings" in r.text


def test_times_keep_their_own_offset_without_a_zone() -> None:
    r = render(incident(), "firing", "http://x", now=NOW)
    assert "since 01:12 UTC" in r.subject


def test_long_incident_lists_ten_members_and_counts_the_rest() -> None:
    r = render(incident(members=40), "firing", "http://x", now=NOW)
    assert r.text.count("\n  - [major]") == 10
    assert "… and 30 more" in r.text
    assert len(r.payload["incident"]["members"]) == 40


def test_reason_tags_and_state() -> None:
    esc = render(incident(level=2), "escalation", "http://x", now=NOW)
    assert esc.subject.startswith("[MAJOR][ESCALATED L2] ")
    assert "Escalated to level 2" in esc.text
    res = render(incident(state="resolved"), "resolved", "http://x", now=NOW)
    assert res.subject.startswith("[RESOLVED MAJOR] ")
    assert "No action needed" in res.text
    acked = render(incident(state="acknowledged", acked_by="officer-1", assignee="officer-2"), "firing", "http://x",
                   now=NOW)
    assert "State: acknowledged, acknowledged by officer-1, assigned to officer-2" in acked.text
    assert render(incident(), "test", "http://x", now=NOW).subject.startswith("[TEST][MAJOR] ")
    back = render(incident(), "reopened", "http://x", now=NOW)
    assert back.subject.startswith("[MAJOR][REOPENED] ") and back.text.startswith("Back again")
    with pytest.raises(ValueError):
        render(incident(), "because", "http://x")


def test_no_district_means_city_wide_and_district_in_title_is_not_repeated() -> None:
    r = render(incident(district=None, district_name=None), "firing", "http://x", now=NOW)
    assert "Where: city-wide" in r.text
    r = render(incident(title="Cameras offline in Kiến An"), "firing", "http://x", now=NOW)
    assert r.subject.count("Kiến An") == 1


def test_payload_is_a_stable_json_document() -> None:
    r = render(incident(extra_field="internal"), "firing", "http://h:8000", now=NOW)
    doc = json.loads(json.dumps(r.payload))
    assert doc["version"] == 1 and doc["reason"] == "firing" and doc["text"] == r.text
    assert doc["links"] == {"ui": "http://h:8000/ops#incident/42", "ack": "http://h:8000/api/incidents/42/ack"}
    assert "extra_field" not in doc["incident"]
    assert doc["incident"]["district_name"] == "Kiến An" and doc["incident"]["member_count"] == 3


def test_targets_for_officers_and_webhooks() -> None:
    officers: list[dict[str, Any]] = [
        {"id": "a", "name": "A", "email": "a@x.vn"}, {"id": "b", "name": "B", "email": None},
        {"id": "c", "name": "C", "email": "c@x.vn"}]
    config = NotifyConfig(smtp_host="mail", webhook_urls=["http://hook/1", "http://hook/2"])
    assert targets_for(config, officers, ["email", "webhook", "websocket"]) == [
        ("email", "a@x.vn"), ("email", "c@x.vn"), ("webhook", "http://hook/1"), ("webhook", "http://hook/2")]
    assert targets_for(NotifyConfig(webhook_urls=["http://hook/1"]), officers, ["email", "webhook"]) == [
        ("webhook", "http://hook/1")]
    r = render(incident(), "firing", "http://x", now=NOW)
    rows = notification_rows(r, 42, "firing", [("email", "a@x.vn")])
    assert rows[0].subject == r.subject and rows[0].body is r.payload and rows[0].incident_id == 42


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValueError):
        NotifyConfig(smtp_hots="typo")  # type: ignore[call-arg]
