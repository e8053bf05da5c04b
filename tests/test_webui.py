"""The web UI in headless Chromium (Debian's chromium + chromium-driver via selenium) against a live
server: API key, chat with an uploaded image and think mode, text-to-image with progress and the
thought, editing, the gallery's downloads, and an error message. Screenshots are saved to
$INTERNVLU_ARTIFACTS (default: the pytest tmp dir) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serving_helpers import CKPT, LiveServer, png_file

from internvlu.serving import ServerSettings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")  # fmt: skip
KEY = "ui-key"


@pytest.fixture(scope="module")
def server():
    from internvlu import InternVLUPipeline

    pipe = InternVLUPipeline.from_pretrained(CKPT)
    with LiveServer(create_app(pipe, ServerSettings(api_keys=(KEY,), default_thought_tokens=6))) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="internvlu-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("INTERNVLU_ARTIFACTS") or tmp_path_factory.mktemp("webui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait(driver, condition, timeout: float = 40):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def el(driver, element_id: str):
    return driver.find_element(By.ID, element_id)


def test_web_ui_end_to_end(server, browser, shots, tmp_path):
    d = browser
    d.get(server.url + "/")
    assert d.title == "InternVL-U"
    wait(d, lambda d: el(d, "health").text.startswith("ok"))
    wait(d, lambda d: "API key" in el(d, "model-name").text)  # 401 until a key is given
    el(d, "api-key").send_keys(KEY)
    d.execute_script("document.getElementById('api-key').dispatchEvent(new Event('change'))")
    wait(d, lambda d: el(d, "model-name").text == "model: internvlu")

    # chat: an uploaded image, think on; the answer streams into an assistant bubble with a thought box
    picture = png_file(tmp_path / "red.png", (64, 64), (220, 20, 20))
    el(d, "chat-input").send_keys("What colour is this square?")
    el(d, "chat-images").send_keys(str(picture))
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-thumbs img")) == 1)
    el(d, "chat-think").click()
    max_tokens = el(d, "chat-max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("6")
    el(d, "chat-send").click()
    reply = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done"))[0]
    assert d.find_elements(By.CSS_SELECTOR, ".msg.user img"), "the uploaded image is shown in the chat"
    thought = reply.find_element(By.CSS_SELECTOR, "details.thought")
    assert thought.is_displayed() and thought.text.strip()
    assert not el(d, "error").is_displayed()
    d.save_screenshot(str(shots / "chat.png"))

    # text-to-image with think: progress reaches the last step, the thought is shown, a card appears
    d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=create]").click()
    el(d, "gen-prompt").send_keys("a red cube on a table")
    for field, value in (("gen-size", "64x64"), ("gen-steps", "3"), ("gen-seed", "11")):
        el(d, field).clear()
        el(d, field).send_keys(value)
    el(d, "gen-think").click()
    el(d, "gen-go").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#gen-results .card"))
    wait(d, lambda d: el(d, "gen-status").text.startswith("done"))
    assert el(d, "gen-progress").get_attribute("value") == el(d, "gen-progress").get_attribute("max") == "3"
    assert el(d, "gen-thought-box").is_displayed() and el(d, "gen-thought").text.strip()
    assert "seed 11" in d.find_element(By.CSS_SELECTOR, "#gen-results .card").text
    d.save_screenshot(str(shots / "create.png"))

    # editing an uploaded image
    d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=edit]").click()
    el(d, "edit-images").send_keys(str(picture))
    el(d, "edit-prompt").send_keys("make it blue")
    el(d, "edit-steps").clear()
    el(d, "edit-steps").send_keys("2")
    el(d, "edit-go").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-results .card"))
    assert "edit · 64x64" in d.find_element(By.CSS_SELECTOR, "#edit-results .card").text
    d.save_screenshot(str(shots / "edit.png"))

    # the gallery holds both images, each downloadable as a PNG carrying its prompt
    d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=gallery]").click()
    links = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .card a.download"))
    assert len(links) == 2 and el(d, "gallery-count").text == "2"
    assert links[0].get_attribute("download").endswith(".png")
    png = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {"
        "  const bytes = new Uint8Array(b);"
        "  done({sig: Array.from(bytes.slice(1, 4)).map(c => String.fromCharCode(c)).join(''),"
        "        text: new TextDecoder('latin1').decode(bytes)});"
        "});",
        links[1].get_attribute("href"),
    )
    assert png["sig"] == "PNG" and "internvlu:prompt" in png["text"] and "a red cube on a table" in png["text"]
    d.save_screenshot(str(shots / "gallery.png"))

    # a request over a limit shows the server's error message
    d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=create]").click()
    el(d, "gen-size").clear()
    el(d, "gen-size").send_keys("4000x4000")
    el(d, "gen-go").click()
    error = wait(d, lambda d: el(d, "error") if el(d, "error").is_displayed() else None)
    assert "400" in error.text and "size" in error.text
    d.save_screenshot(str(shots / "error.png"))
    assert sorted(p.name for p in shots.glob("*.png")) >= ["chat.png", "create.png", "edit.png", "error.png",
                                                          "gallery.png"]  # fmt: skip
