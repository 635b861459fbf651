"""Mixing data sources (data.train as a list, data.replay): exact counts, seeding, forms, errors.

All rows are SYNTHETIC: numbered made-up messages, so each row's source and identity can be read off it.
"""
from __future__ import annotations

from collections import Counter

import pytest
from conftest import SYNTHETIC_ROWS, write_rows

from tunelab.config import DataConfig, load_config
from tunelab.core.errors import TunelabError
from tunelab.data import load_examples

CLS = ("classification",)


def _labelled(tmp_path, name: str, n: int, labels=("ham", "spam"), **columns) -> str:
    """n SYNTHETIC classification rows 'NAME message I' (columns renamed by ``columns``, e.g. text='body')."""
    rows = [{"text": f"{name} message {i}", "label": labels[i % len(labels)]} for i in range(n)]
    rows = [{columns.get(key, key): value for key, value in row.items()} for row in rows]
    return str(write_rows(tmp_path / f"{name}.jsonl", rows))


def _origin(rows: list[dict]) -> Counter:
    return Counter(row["text"].split()[0] for row in rows)


def test_fraction_gives_exact_counts_and_eval_comes_from_the_first_source(tmp_path):
    sms, email = _labelled(tmp_path, "sms", 40), _labelled(tmp_path, "email", 100)
    data = DataConfig(train=[sms, {"path": email, "fraction": 0.25}], eval_fraction=0.25)
    examples = load_examples(data, seed=0, accept=CLS)
    # 40 sms rows: 10 held out, 30 train; email is 25% of the mix: 30 / 0.75 = 40 rows in all, 10 of them email.
    assert _origin(examples.train) == {"sms": 30, "email": 10}
    assert _origin(examples.eval) == {"sms": 10}
    assert not {r["text"] for r in examples.train} & {r["text"] for r in examples.eval}
    assert len({r["text"] for r in examples.train}) == 40  # drawn without replacement
    assert {r["source"] for r in examples.train} == {sms, email} and {r["source"] for r in examples.eval} == {sms}
    first, second = examples.sources
    assert (first["key"], first["rows"], first["eval"], first["taken"]) == ("data.train[0]", 40, 10, 30)
    assert (second["key"], second["rows"], second["taken"], second["fraction"]) == ("data.train[1]", 100, 10, 0.25)
    assert (first["share"], second["share"]) == (0.75, 0.25)
    assert _origin(examples.train[:20]) != {"sms": 20}  # shuffled together, not one block after the other


def test_max_rows_per_source_and_from_data_max_rows(tmp_path):
    a, b, c = (_labelled(tmp_path, name, 30) for name in ("a", "b", "c"))
    data = DataConfig(train=[a, {"path": b, "max_rows": 5}, {"path": c, "fraction": 0.5}], max_rows=12, eval_fraction=0)
    examples = load_examples(data, seed=3, accept=CLS)
    assert _origin(examples.train) == {"a": 12, "b": 5, "c": 17}  # data.max_rows caps a; c = 0.5 x 34


def test_every_source_with_a_fraction_fills_the_largest_mix(tmp_path):
    a, b = _labelled(tmp_path, "a", 20), _labelled(tmp_path, "b", 100)
    data = DataConfig(train=[{"path": a, "fraction": 0.4}, {"path": b, "fraction": 0.6}], eval_fraction=0)
    assert _origin(load_examples(data, seed=0, accept=CLS).train) == {"a": 20, "b": 30}  # a limits: 20 / 0.4 = 50


def test_upsample_repeats_a_small_source_evenly(tmp_path):
    big, small = _labelled(tmp_path, "big", 30), _labelled(tmp_path, "small", 4)
    data = DataConfig(train=[big, {"path": small, "fraction": 0.5, "upsample": True}], eval_fraction=0)
    examples = load_examples(data, seed=0, accept=CLS)
    assert _origin(examples.train) == {"big": 30, "small": 30}
    assert sorted(Counter(r["text"] for r in examples.train if r["text"].startswith("small")).values()) == [7, 7, 8, 8]
    assert examples.sources[1]["upsampled"]


def test_a_mix_is_seeded(tmp_path):
    data = DataConfig(train=[_labelled(tmp_path, "a", 30), {"path": _labelled(tmp_path, "b", 30), "fraction": 0.3}])
    first, again, other = (load_examples(data, seed=s, accept=CLS) for s in (7, 7, 8))
    assert (first.train, first.eval) == (again.train, again.eval)
    assert first.train != other.train


def test_string_list_and_mapping_forms_of_one_source_are_the_same(tmp_path):
    path = _labelled(tmp_path, "a", 20)
    forms = [path, [path], {"path": path}, [{"path": path}]]
    loaded = [load_examples(DataConfig(train=form, eval_fraction=0.2), seed=1, accept=CLS) for form in forms]
    assert all((e.train, e.eval) == (loaded[0].train, loaded[0].eval) for e in loaded)
    assert len(loaded[0].train) == 16 and len(loaded[0].eval) == 4


def test_replay_is_sugar_for_appending_a_source(tmp_path):
    sms, email = _labelled(tmp_path, "sms", 24), _labelled(tmp_path, "email", 50)
    replay = DataConfig(train=sms, replay={"train": email, "fraction": 0.2})
    listed = DataConfig(train=[sms, {"path": email, "fraction": 0.2}])
    a, b = (load_examples(data, seed=5, accept=CLS) for data in (replay, listed))
    assert (a.train, a.eval) == (b.train, b.eval)
    assert [s["key"] for s in a.sources] == ["data.train", "data.replay"]
    assert load_config({"model": "tiny-bert", "stage": "classify", "method": "full", "data": {"train": sms,
                        "replay": email}}, ["data.replay.fraction=0.2"]).data.replay.fraction == 0.2


def test_each_source_has_its_own_columns_and_format(tmp_path):
    plain = _labelled(tmp_path, "plain", 12)
    renamed = _labelled(tmp_path, "renamed", 12, text="body", label="tag")
    data = DataConfig(train=[plain, {"path": renamed, "fields": {"text": "body", "label": "tag"},
                                     "format": "classification"}], eval_fraction=0)
    assert _origin(load_examples(data, seed=0, accept=CLS).train) == {"plain": 12, "renamed": 12}
    dolly, sharegpt = (str(write_rows(tmp_path / f"{d}.jsonl", SYNTHETIC_ROWS[d])) for d in ("dolly", "sharegpt"))
    chats = load_examples(DataConfig(train=[dolly, sharegpt], eval_fraction=0), seed=0, accept=("instruction", "messages"))
    assert len(chats.train) == 16  # instruction rows become chats: they mix with chat rows


def test_sources_in_different_formats_are_an_error_naming_both(tmp_path):
    cls, text = _labelled(tmp_path, "a", 8), str(write_rows(tmp_path / "t.jsonl", SYNTHETIC_ROWS["text"]))
    with pytest.raises(TunelabError, match=r"data.train\[1\] \(.*t.jsonl\) is in format 'text' but data.train\[0\] "
                                           r"\(.*a.jsonl\) is 'classification'"):
        load_examples(DataConfig(train=[cls, {"path": text, "fraction": 0.5}]), seed=0, accept=CLS)


@pytest.mark.parametrize("source, fragment", [
    ({"fraction": 0.9}, r"data.train\[1\] \(.*b.jsonl\): fraction 0.9 of a mix of 50 training rows needs 45 rows, "
                        r"but it has 10; .*upsample: true"),
    ({"fraction": 0.001}, r"fraction 0.001 of a mix of 5 training rows rounds to 0 rows"),
])
def test_a_fraction_the_rows_cannot_meet_is_an_error_naming_the_source(tmp_path, source, fragment):
    a, b = _labelled(tmp_path, "a", 5), _labelled(tmp_path, "b", 10)
    with pytest.raises(TunelabError, match=fragment):
        load_examples(DataConfig(train=[a, {"path": b, **source}], eval_fraction=0), seed=0, accept=CLS)


def test_hub_source_offline_is_named(tmp_path):
    with pytest.raises(TunelabError, match="'someorg/somedata'.*offline"):
        load_examples(DataConfig(train=[_labelled(tmp_path, "a", 5), "someorg/somedata"]), seed=0, accept=CLS)


BASE = {"model": "tiny-bert", "stage": "classify", "method": "full"}


@pytest.mark.parametrize("data, fragments", [
    ({"train": ["a.jsonl", {"path": "b.jsonl", "fraction": 1.5}]}, ("data.train[1].fraction", "less than or equal to 1",
                                                                    "got 1.5")),
    ({"train": ["a.jsonl", {"path": "b.jsonl", "fraction": 0}]}, ("data.train[1].fraction", "greater than 0")),
    ({"train": ["a.jsonl", {"path": "b.jsonl", "fraction": "lots"}]}, ("data.train[1].fraction", "'lots'")),
    ({"train": ["a.jsonl", {"path": "b.jsonl", "fraction": 0.6}, {"path": "c.jsonl", "fraction": 0.4}]},
     ("data.train sum to 1", "less than 1")),
    ({"train": [{"path": "a.jsonl", "fraction": 0.5}, {"path": "b.jsonl", "fraction": 0.3}]},
     ("every source of data.train has a fraction", "sum to 1", "0.8")),
    ({"train": "a.jsonl", "replay": {"train": "b.jsonl", "fraction": 1.0}}, ("data.train + data.replay sum to 1",)),
    ({"train": ["a.jsonl", {"path": "b.jsonl", "fraction": 0.2, "max_rows": 3}]},
     ("data.train[1]", "fraction or max_rows, not both")),
    ({"train": ["a.jsonl", {"path": "b.jsonl", "upsample": True}]}, ("data.train[1]", "upsample", "with a fraction")),
    ({"train": ["a.jsonl", {"path": "b.jsonl", "fration": 0.2}]},
     ("unknown key 'data.train[1].fration'", "did you mean 'data.train[1].fraction'")),
    ({"train": ["a.jsonl", {"file": "b.jsonl"}]}, ("unknown key 'data.train[1].file'",)),
    ({"train": "a.jsonl", "replay": {"trian": "b.jsonl"}}, ("unknown key 'data.replay.trian'",
                                                              "did you mean 'data.replay.train'")),
    ({"train": []}, ("data.train", "at least 1 item")),
    ({"train": 5}, ("data.train", "a list of sources", "got 5")),
])
def test_bad_mix_configs_name_the_key(data, fragments):
    with pytest.raises(TunelabError) as info:
        load_config({**BASE, "data": data})
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_sources_fill_in_data_level_settings():
    data = DataConfig(train=["a.jsonl", {"path": "b.jsonl", "format": "text", "fraction": 0.1}],
                      format="classification", fields={"text": "body"}, split="validation", max_rows=7)
    (key_a, a), (key_b, b) = data.sources()
    assert (key_a, a.format, a.fields, a.split, a.max_rows) == ("data.train[0]", "classification", {"text": "body"},
                                                                "validation", 7)
    assert (key_b, b.format, b.max_rows) == ("data.train[1]", "text", None)  # its own format; a fraction, no cap
    assert data.describe() == "a.jsonl + b.jsonl"
