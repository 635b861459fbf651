"""Reading rows (JSONL/JSON/CSV/Parquet), detecting formats, mapping fields, eval splits.

All data here is SYNTHETIC (see conftest.SYNTHETIC_ROWS), written to tmp_path per test.
"""
from __future__ import annotations

import json

import pytest
from conftest import DIALECT_FORMAT, SYNTHETIC_ROWS, write_rows

from tunelab.config import DataConfig
from tunelab.data import load_examples, load_file
from tunelab.core.errors import TunelabError

SUFFIXES = [".jsonl", ".json", ".csv", ".parquet"]
NESTED = {"openai", "sharegpt"}  # chat lists have no CSV form

CASES = [(dialect, suffix) for dialect in SYNTHETIC_ROWS for suffix in SUFFIXES
         if not (suffix == ".csv" and dialect in NESTED)]

# What the first SYNTHETIC row of each dialect must normalise to.
FIRST_EXAMPLE = {
    "text": {"text": SYNTHETIC_ROWS["text"][0]["text"]},
    "dolly": {"messages": [{"role": "user", "content": "What colour is the sky?"},
                           {"role": "assistant", "content": "It is blue."}]},
    "alpaca": {"messages": [{"role": "user", "content": "Name the colour.\n\nthe sky"},
                            {"role": "assistant", "content": "Blue."}]},
    "openai": {"messages": [{"role": "user", "content": "Colour of the sky?"},
                            {"role": "assistant", "content": "Blue."}]},
    "sharegpt": {"messages": [{"role": "user", "content": "Colour of the sky?"},
                              {"role": "assistant", "content": "Blue."}]},
    "classification": {"text": "I hate the sky.", "label": "0"},
    "preference": {"prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "I don't know."},
}


@pytest.mark.parametrize("dialect, suffix", CASES, ids=[f"{d}{s}" for d, s in CASES])
def test_format_is_detected_and_normalised(synthetic_data, dialect, suffix):
    path = synthetic_data(dialect, suffix)
    fmt, examples = load_file(str(path))
    assert fmt == DIALECT_FORMAT[dialect]
    assert len(examples) == len(SYNTHETIC_ROWS[dialect])
    assert examples[0] == FIRST_EXAMPLE[dialect]


def test_explicit_format_overrides_detection(synthetic_data):
    # A classification file read as plain text: the label column is ignored.
    fmt, examples = load_file(str(synthetic_data("classification")), data_format="text")
    assert fmt == "text" and examples[0] == {"text": "I hate the sky."}


def test_json_object_wrapping_a_list(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": SYNTHETIC_ROWS["text"][:3]}))
    fmt, examples = load_file(str(path))
    assert fmt == "text" and len(examples) == 3


def test_field_mapping(tmp_path):
    # SYNTHETIC rows with the file's own column names.
    rows = [{"question": "Colour of snow?", "answer": "White.", "id": 1},
            {"question": "Colour of coal?", "answer": "Black.", "id": 2}]
    path = write_rows(tmp_path / "qa.csv", rows)
    fmt, examples = load_file(str(path), fields={"instruction": "question", "response": "answer"})
    assert fmt == "instruction"
    assert examples[1]["messages"] == [{"role": "user", "content": "Colour of coal?"},
                                       {"role": "assistant", "content": "Black."}]


def test_field_mapping_to_absent_column_names_it(tmp_path):
    path = write_rows(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(TunelabError) as info:
        load_file(str(path), fields={"instruction": "question", "response": "answr"})
    assert "'answr'" in str(info.value) and "answer" in str(info.value)


def test_undetectable_format_lists_fields(tmp_path):
    path = write_rows(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(TunelabError, match=r"cannot detect the format from fields \['bar', 'foo'\]"):
        load_file(str(path))


# --------------------------------------------------------------------------- bad files and rows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".json"])
def test_missing_field_names_field_and_row(tmp_path, suffix):
    rows = [dict(row) for row in SYNTHETIC_ROWS["dolly"][:4]]  # SYNTHETIC
    rows[2]["response"] = None
    path = write_rows(tmp_path / f"holes{suffix}", rows)
    with pytest.raises(TunelabError) as info:
        load_file(str(path))
    assert "row 3" in str(info.value) and "field 'response' is missing" in str(info.value)


def test_missing_key_in_later_jsonl_row(tmp_path):
    rows = [dict(row) for row in SYNTHETIC_ROWS["preference"][:3]]  # SYNTHETIC
    del rows[1]["rejected"]
    path = write_rows(tmp_path / "pref.jsonl", rows)
    with pytest.raises(TunelabError, match="row 2: field 'rejected' is missing"):
        load_file(str(path))


@pytest.mark.parametrize("bad_turn, expected", [
    ({"role": "robot", "content": "hi"}, "messages[1] has role 'robot'"),
    ({"role": "assistant"}, "messages[1] has no text 'content'"),
])
def test_bad_chat_turn(tmp_path, bad_turn, expected):
    row = {"messages": [{"role": "user", "content": "hi"}, bad_turn]}
    path = write_rows(tmp_path / "chat.jsonl", [row])
    with pytest.raises(TunelabError, match=f"row 1: {expected}".replace("[", r"\[").replace("]", r"\]")):
        load_file(str(path))


def test_chat_without_assistant_reply(tmp_path):
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(TunelabError, match="row 1: no assistant message"):
        load_file(str(path))


@pytest.mark.parametrize("content, expected", [
    ("", "is empty"),
    ("\n\n", "has no rows"),
    ("[]", "has no rows"),
    ("text\n", "has no rows"),
])
def test_empty_files(tmp_path, content, expected):
    suffix = {"[]": ".json", "text\n": ".csv"}.get(content, ".jsonl")
    path = tmp_path / f"empty{suffix}"
    path.write_text(content)
    with pytest.raises(TunelabError, match=expected):
        load_file(str(path))


def test_bad_json_line_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(TunelabError, match=r"line 2: invalid JSON"):
        load_file(str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('["a", "b"]\n')
    with pytest.raises(TunelabError, match="line 1: expected a JSON object, got list"):
        load_file(str(path))


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(TunelabError, match="not UTF-8"):
        load_file(str(path))


@pytest.mark.parametrize("name, expected", [
    ("nope.jsonl", "data file not found"),
    ("notes.txt", "unsupported type '.txt'"),
    ("folder", "is a directory"),
])
def test_bad_paths(tmp_path, name, expected):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    with pytest.raises(TunelabError, match=expected):
        load_file(str(tmp_path / name))


def test_hub_dataset_offline():
    with pytest.raises(TunelabError, match="cannot be reached \\(offline\\)"):
        load_file("someorg/somedataset")


# --------------------------------------------------------------------------- eval split


def test_eval_split_by_fraction_is_seeded_and_disjoint(synthetic_data):
    data = DataConfig(train=str(synthetic_data("dolly")), eval_fraction=0.25)
    first = load_examples(data, seed=1, accept=("instruction",))
    again = load_examples(data, seed=1, accept=("instruction",))
    other = load_examples(data, seed=2, accept=("instruction",))
    assert (len(first.train), len(first.eval)) == (6, 2)
    assert first.train == again.train and first.eval == again.eval
    questions = lambda exs: {e["messages"][0]["content"] for e in exs}  # noqa: E731
    assert not questions(first.train) & questions(first.eval)
    assert len(questions(first.train) | questions(first.eval)) == 8
    assert (first.train, first.eval) != (other.train, other.eval)


def test_eval_split_by_file(synthetic_data):
    train = synthetic_data("dolly", ".jsonl")
    held_out = synthetic_data("alpaca", ".csv", n=3)
    data = DataConfig(train=str(train), eval=str(held_out))
    examples = load_examples(data, seed=0, accept=("instruction",))
    assert len(examples.train) == 8 and len(examples.eval) == 3
    assert examples.eval[0]["messages"][0]["content"] == "Name the colour.\n\nthe sky"


def test_eval_file_must_match_train_format(synthetic_data):
    data = DataConfig(train=str(synthetic_data("dolly")), eval=str(synthetic_data("text")))
    with pytest.raises(TunelabError, match="format 'text' but train is 'instruction'"):
        load_examples(data, seed=0, accept=("instruction",))


def test_no_eval_and_max_rows(synthetic_data):
    data = DataConfig(train=str(synthetic_data("text")), eval_fraction=0.0, max_rows=5)
    examples = load_examples(data, seed=0, accept=("text",))
    assert (len(examples.train), len(examples.eval)) == (5, 0)


def test_too_few_rows_for_eval(synthetic_data):
    data = DataConfig(train=str(synthetic_data("text", n=2)), eval_fraction=0.9)  # would leave no train rows
    with pytest.raises(TunelabError, match="too few"):
        load_examples(data, seed=0, accept=("text",))


def test_stage_rejects_wrong_format(synthetic_data):
    data = DataConfig(train=str(synthetic_data("preference")))
    with pytest.raises(TunelabError, match="format 'preference', but this stage needs: instruction, messages"):
        load_examples(data, seed=0, accept=("instruction", "messages"))
