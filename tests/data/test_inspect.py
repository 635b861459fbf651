"""`tunelab data inspect`: format, row count, token stats and the ⟦ ⟧-marked trained span."""
from __future__ import annotations

import re
import statistics

from tunelab.data.inspect import inspect_data


def _chat_lengths(tokenizer, rows):
    lengths = []
    for row in rows:
        chat = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]
        lengths.append(len(tokenizer(tokenizer.apply_chat_template(chat, tokenize=False),
                                     add_special_tokens=False)["input_ids"]))
    return lengths


def test_inspect_cli_on_instruction_data(cli, synthetic_data, tiny_tokenizer):
    from conftest import SYNTHETIC_ROWS

    path = synthetic_data("dolly")  # SYNTHETIC
    rc, out, err = cli("data", "inspect", path, "--model", "tiny-llama")
    assert rc == 0, err
    assert re.search(r"^format:\s+instruction$", out, re.M)
    assert re.search(r"^rows:\s+8$", out, re.M)
    stats = re.search(r"^tokens:\s+min (\d+)\s+median (\d+)\s+p95 (\d+)\s+max (\d+)", out, re.M)
    assert stats, out
    lengths = _chat_lengths(tiny_tokenizer, SYNTHETIC_ROWS["dolly"])
    low, median, p95, high = map(int, stats.groups())
    assert (low, high) == (min(lengths), max(lengths))
    assert low <= median <= p95 <= high and median == int(statistics.median(lengths))
    # Exactly one marked span: the first row's reply and its end-of-turn marker, nothing of the prompt.
    example = out.split("carry loss):\n", 1)[1]
    assert example.count("⟦") == 1 and example.count("⟧") == 1
    assert example.endswith("<|im_start|>user\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\n"
                            "⟦It is blue.<|im_end|>\n⟧\n")


def test_inspect_other_formats(synthetic_data, tiny_tokenizer):
    text = inspect_data(str(synthetic_data("text")), tiny_tokenizer)  # SYNTHETIC
    assert text["format"] == "text" and text["example"].startswith("⟦The colour of the sky")
    cls = inspect_data(str(synthetic_data("classification", ".csv")), tiny_tokenizer)
    assert cls["format"] == "classification" and cls["labels"] == {"0": 4, "1": 4}
    pref = inspect_data(str(synthetic_data("preference", ".parquet")), tiny_tokenizer)
    assert pref["format"] == "preference" and pref["rows"] == 8 and "CHOSEN: Blue." in pref["example"]
    chat = inspect_data(str(synthetic_data("sharegpt")), tiny_tokenizer)
    assert chat["format"] == "messages" and "⟦Blue.<|im_end|>\n⟧" in chat["example"]


def test_inspect_rating_data(tmp_path, tiny_tokenizer):
    from conftest import write_rows

    rows = [{"prompt": "Colour of snow?", "response": answer, "score": score} for answer, score in
            (("White.", 5), ("Green.", 1))]  # SYNTHETIC
    rating = inspect_data(str(write_rows(tmp_path / "ratings.jsonl", rows)), tiny_tokenizer)
    assert rating["format"] == "rating" and rating["rows"] == 2 and "SCORE: 5" in rating["example"]


def test_inspect_a_run_config_shows_the_mix(cli, tmp_path):
    from conftest import write_config, write_rows

    # SYNTHETIC: 40 "sms" rows (10% held out for eval) and 100 "email" rows replayed at 25% of the mix.
    sms = write_rows(tmp_path / "sms.jsonl", [{"text": f"sms {i}", "label": ["ham", "spam"][i % 2]} for i in range(40)])
    email = write_rows(tmp_path / "email.jsonl", [{"text": f"email {i}", "label": "ham"} for i in range(100)])
    config = write_config(tmp_path / "run.yaml", {
        "model": "tiny-bert", "stage": "classify", "method": "full",
        "data": {"train": str(sms), "replay": {"train": str(email), "fraction": 0.25}}})
    rc, out, err = cli("data", "inspect", config)
    assert rc == 0, err
    assert re.search(r"^format:\s+classification$", out, re.M)
    assert re.search(r"^rows:\s+48 train, 4 eval \(from data.train\)$", out, re.M)  # 36 sms / 0.75 = 48
    assert re.search(rf"^\s+data.train {re.escape(str(sms))}\s+36 / 40\s+75.0%\s+\(4 held out for eval\)$", out, re.M)
    assert re.search(rf"^\s+data.replay {re.escape(str(email))}\s+12 / 100\s+25.0%\s+\(fraction 0.25\)$", out, re.M)
    assert "(tiny-bert tokenizer)" in out  # the config's model, unless --model says otherwise
    assert re.search(r"^labels:\s+ham=30, spam=18$", out, re.M)  # 12 email hams + 18 sms of each label
