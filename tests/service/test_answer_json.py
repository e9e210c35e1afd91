"""The hand-built JSON of answers parses to exactly what json.dumps would have written."""

from __future__ import annotations

import json

import pytest

from hashrec.index.retriever import Recommendation
from hashrec.service.recommender import answer_json, items_json

IDS = ["plain", "42", 'quo"te', "back\\slash", "tab\there", "ctl\x01", "ünï", "emoji😀", "", "del\x7f"]


@pytest.mark.parametrize("item", IDS)
def test_items_json_round_trips_any_id(item: str) -> None:
    rec = Recommendation(user="u", items=[item, "z"], scores=[0.1, -3.25e-9], hamming=[0, 64])
    assert json.loads(items_json(rec)) == [
        {"item": item, "score": 0.1, "hamming": 0},
        {"item": "z", "score": -3.25e-9, "hamming": 64},
    ]
    assert json.loads(items_json(rec, with_hamming=False))[1] == {
        "item": "z",
        "score": -3.25e-9,
        "hamming": None,
    }


def test_scores_keep_full_precision() -> None:
    scores = [1 / 3, 2.0**-30, 123456.789, 7.0]
    rec = Recommendation(user="u", items=["a", "b", "c", "d"], scores=scores, hamming=[1, 2, 3, 4])
    assert [x["score"] for x in json.loads(items_json(rec))] == scores


@pytest.mark.parametrize("user", ["u1", 'we"ird', "ü"])
@pytest.mark.parametrize("reason", [None, 'a "reason"'])
def test_answer_json_round_trips(user: str, reason: str | None) -> None:
    rec = Recommendation(user=user, items=["a"], scores=[1.5], hamming=[3])
    body = json.loads(answer_json(user, "20260101T000000Z-abc", "model", reason, 5, 50, items_json(rec)))
    assert body == {
        "user": user,
        "version": "20260101T000000Z-abc",
        "source": "model",
        "reason": reason,
        "k": 5,
        "candidates": 50,
        "items": [{"item": "a", "score": 1.5, "hamming": 3}],
    }


def test_empty_answer() -> None:
    rec = Recommendation(user="u", items=[], scores=[], hamming=[])
    assert json.loads(answer_json("u", "v", "model", None, 5, 5, items_json(rec)))["items"] == []
