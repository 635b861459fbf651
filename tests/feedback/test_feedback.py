"""`tunelab feedback`: form validation, durable JSONL, restart, and a click-through in real headless Chromium."""
import json
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import write_rows
from tunelab.data import load_file
from tunelab.feedback import FeedbackApp, item_id, make_server, read_prompts, read_responses

# SYNTHETIC prompts and two responses each, read from a file: the tests need no model.
PROMPTS = ["What colour is snow?", "What colour is grass?", "What colour is coal?", "What colour is rust?"]
RESPONSES = [row for p in PROMPTS for row in (
    {"prompt": p, "response": f"{p.split()[-1][:-1].capitalize()} is a colour I know well.", "model": "good"},
    {"prompt": p, "response": "I don't know.", "model": "bad"})]


@pytest.fixture
def files(tmp_path):
    return (write_rows(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS]),
            write_rows(tmp_path / "responses.jsonl", RESPONSES), tmp_path / "feedback")


@pytest.fixture
def server(files):
    """Start the page on a free port at make_server's default host; yield (base url, app); stop it."""
    started = []

    def start():
        prompts, responses, out = files
        app = FeedbackApp(read_prompts(prompts), out, read_responses(responses))
        httpd = make_server(app, port=0)  # the default host: what a caller gets without asking
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        host, port = httpd.server_address[:2]
        return f"http://{host}:{port}", app

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _post(url, fields, content_type="application/x-www-form-urlencoded"):
    data = urllib.parse.urlencode(fields, doseq=True).encode()
    request = urllib.request.Request(url + "/judge", data=data, headers={"Content-Type": content_type})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _lines(out: Path, name: str) -> list[dict]:
    path = out / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_binds_loopback_and_bad_posts_are_4xx_and_write_nothing(server, files):
    url, app = server()
    assert url.startswith("http://127.0.0.1:"), f"the page is not bound to loopback by default: {url}"
    assert app.store.directory == files[2]
    urllib.request.urlopen(url + "/").read()  # shows the first item
    first = item_id(PROMPTS[0])
    bad = [
        {"item": first, "choice": "left"},                      # not a choice
        {"item": "nope", "choice": "a"},                        # unknown item
        {"item": first, "choice": "a", "rating_a": "6"},        # rating out of range
        {"item": first, "choice": "a", "rating_b": "2.5"},      # not a whole number
        {"item": first, "choice": ["a", "b"]},                  # repeated field
        {"item": first, "choice": "a", "extra": "x"},           # unknown field
        {"choice": "a"},                                        # no item
    ]
    for fields in bad:
        assert 400 <= _post(url, fields) < 500, fields
    assert _post(url, {"item": first, "choice": "a"}, content_type="text/plain") == 415
    assert not any((files[2] / name).exists() for name in ("preference.jsonl", "rating.jsonl", "judgements.jsonl"))
    assert _post(url, {"item": first, "choice": "a", "rating_a": "5", "rating_b": "1"}) == 303
    assert _post(url, {"item": first, "choice": "b"}) == 409  # judged already: nothing more written
    assert len(_lines(files[2], "preference.jsonl")) == 1 and len(_lines(files[2], "judgements.jsonl")) == 1


def test_restart_keeps_everything_and_files_feed_reward_and_dpo(server, files):
    url, app = server()
    urllib.request.urlopen(url + "/").read()
    first, second = item_id(PROMPTS[0]), item_id(PROMPTS[1])
    assert _post(url, {"item": first, "choice": "a", "rating_a": "4", "rating_b": "2"}) == 303
    url2, app2 = server()  # a restarted server on the same output directory
    assert first in app2.done and app2.next_item().id == second
    assert _post(url2, {"item": second, "choice": "tie", "rating_a": "3", "rating_b": "3"}) == 303
    out = files[2]
    assert [j["choice"] for j in _lines(out, "judgements.jsonl")] == ["a", "tie"]
    fmt, pairs = load_file(str(out / "preference.jsonl"))
    assert fmt == "preference" and len(pairs) == 1
    fmt, ratings = load_file(str(out / "rating.jsonl"))
    assert fmt == "rating" and sorted(r["score"] for r in ratings) == [2, 3, 3, 4]


def test_a_torn_line_from_elsewhere_is_skipped_on_restart(files):
    prompts, responses, out = files
    out.mkdir(parents=True)
    (out / "judgements.jsonl").write_text(json.dumps({"item": item_id(PROMPTS[0]), "choice": "skip"}) + "\n{\"item\": ")
    app = FeedbackApp(read_prompts(prompts), out, read_responses(responses))
    assert app.done == {item_id(PROMPTS[0])}


# --------------------------------------------------------------------------- real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.browser
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Debian chromium + chromium-driver are not installed (`make test` installs them)")
def test_click_through_judgements_in_headless_chromium(server, files, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    url, app = server()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(15)  # element lookups wait for the page that a click or refresh loads

    def wait_until_left(old_page) -> None:
        # While the page is being replaced, chromedriver sometimes answers a probe of the old element with
        # "unhandled inspector error" instead of "stale element" (seen once under load): poll again.
        WebDriverWait(driver, 15, ignored_exceptions=(WebDriverException,)).until(
            expected_conditions.staleness_of(old_page))

    def submit(button_id: str) -> None:
        """Click a form button and wait until the browser has left the current page."""
        old_page = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.ID, button_id).click()
        wait_until_left(old_page)
    expected = []
    try:
        driver.get(url + "/")
        for step, action in enumerate(["pick-left", "pick-right", "tie", "skip"]):
            prompt = driver.find_element(By.ID, "prompt").text
            left, right = driver.find_element(By.ID, "left-text").text, driver.find_element(By.ID, "right-text").text
            assert {left, right} == {r["response"] for r in RESPONSES if r["prompt"] == prompt}
            driver.find_element(By.ID, "rate-left-5").click()
            driver.find_element(By.ID, "rate-right-2").click()
            if step == 1:
                old_page = driver.find_element(By.TAG_NAME, "html")
                driver.refresh()  # reloading shows the same, unjudged item (maybe swapped) and loses nothing
                wait_until_left(old_page)  # not the old page's nodes
                assert driver.find_element(By.ID, "prompt").text == prompt
                left, right = driver.find_element(By.ID, "left-text").text, driver.find_element(By.ID, "right-text").text
                driver.find_element(By.ID, "rate-left-5").click()
                driver.find_element(By.ID, "rate-right-2").click()
            submit(action)
            expected.append((prompt, action, left, right))
        assert "All 4 items are judged" in driver.find_element(By.ID, "finished").text
    finally:
        driver.quit()
    out = files[2]
    judgements = _lines(out, "judgements.jsonl")
    assert [j["prompt"] for j in judgements] == [e[0] for e in expected]
    assert [j["choice"] for j in judgements][2:] == ["tie", "skip"]
    prefs = _lines(out, "preference.jsonl")
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in prefs] == [
        (expected[0][0], expected[0][2], expected[0][3]), (expected[1][0], expected[1][3], expected[1][2])]
    ratings = _lines(out, "rating.jsonl")
    assert len(ratings) == 8  # 4 judgements x 2 ratings (a skip keeps its ratings too)
    by_text = {(r["prompt"], r["response"]): r["score"] for r in ratings}
    for prompt, _, left, right in expected:
        assert by_text[(prompt, left)] == 5 and by_text[(prompt, right)] == 2


# --------------------------------------------------------------------------- the CLI


def _cli_default(name: str):
    import inspect

    from tunelab import cli

    return inspect.signature(cli.feedback).parameters[name].default.default  # typer.Option(default, ...)


def test_cli_defaults_are_loopback_and_the_port_the_readme_gives():
    from conftest import REPO_ROOT

    host, port = _cli_default("host"), _cli_default("port")
    assert host == "127.0.0.1"
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"# http://{host}:{port}" in readme, f"README does not give the default address http://{host}:{port}"
    assert f"({host} by default)" in readme


def test_feedback_cli_serves_on_loopback_and_saves_a_judgement(files):
    """`tunelab feedback` end to end: the page comes up on 127.0.0.1 (not asked for), a posted
    judgement lands in preference.jsonl, and Ctrl-C stops it cleanly."""
    import os
    import queue
    import re
    import signal
    import subprocess
    import sys

    from conftest import REPO_ROOT

    prompts, responses, out = files
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "feedback", "--prompts", str(prompts),
                             "--responses", str(responses), "--out", str(out), "--port", "0"],
                            cwd=REPO_ROOT, env=os.environ.copy(), stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen = []
    try:
        while not seen or "feedback page:" not in seen[-1]:
            seen.append(lines.get(timeout=120))  # queue.Empty: the page never came up
        match = re.search(r"feedback page: (http://([\d.]+):(\d+))/", seen[-1])
        assert match, seen
        url, host = match.group(1), match.group(2)
        assert host == "127.0.0.1"
        assert PROMPTS[0] in urllib.request.urlopen(url + "/", timeout=60).read().decode()
        assert _post(url, {"item": item_id(PROMPTS[0]), "choice": "a"}) == 303
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            seen.append("(did not stop within 60 s of SIGINT)")
    # How the server stops (SIGINT, or a kill after 60 s on a loaded machine) is not what this test checks.
    assert [p["prompt"] for p in _lines(out, "preference.jsonl")] == [PROMPTS[0]], "".join(seen)[-2000:]
