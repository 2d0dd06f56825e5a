"""The web chat page at `/`, driven in a real headless Chromium: typed questions get streamed answers."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import pytest

from tests.infer.server_helpers import running_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "sk-page-test"


def ensure_chromium() -> None:
    """Install Debian's chromium when it is missing (root with apt-get), else skip saying why."""
    if os.path.exists(CHROMIUM):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get (as root) is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True, env=env
        )
    assert proc.returncode == 0, f"apt-get install chromium failed: {proc.stderr[-500:]}"


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    ensure_chromium()
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


RECORD_UPDATES = """() => {
  window.__updates = [];
  new MutationObserver(() => {
    const last = [...document.querySelectorAll('.assistant')].pop();
    if (last) window.__updates.push(last.textContent);
  }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
}"""


def ask(page, text: str) -> tuple[str, list[str]]:
    """Type `text`, press Enter, wait for the reply to finish; (reply, the reply's texts as it grew)."""
    page.evaluate(RECORD_UPDATES)
    before = page.locator(".assistant[data-done]").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    # a locator waits without evaluating strings (the page's Content-Security-Policy forbids eval)
    page.locator(".assistant[data-done]").nth(before).wait_for(timeout=60000)
    reply = page.locator(".assistant").last.text_content()
    return reply, page.evaluate("window.__updates")


@pytest.mark.slow
def test_chat_page_streams_answers_in_english_and_chinese(browser, loaded):
    with running_server(loaded, api_key=KEY, max_tokens=24, max_prompt_tokens=512) as (url, _engine):
        page = browser.new_page()
        page.goto(url + "/")
        assert page.title() == "Bessemer chat"
        page.fill("#api_key", KEY)
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "16")
        history = []
        for question in ("What is the capital of France?", "请用中文介绍一下长城。"):
            reply, updates = ask(page, question)
            history.append({"role": "user", "content": question})
            # the page shows exactly what the API answers for the same conversation (greedy)
            want = httpx.post(
                url + "/v1/chat/completions",
                json={"messages": history, "temperature": 0, "max_tokens": 16},
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=60,
            ).json()["choices"][0]["message"]["content"]
            assert reply == want and reply.strip()
            grown = [u for u in dict.fromkeys(updates) if u]
            assert len(grown) > 1 and grown[-1] == reply  # it arrived piece by piece
            history.append({"role": "assistant", "content": reply})
        assert page.locator(".user").all_text_contents() == [m["content"] for m in history[::2]]
        page.click("#reset")
        assert page.locator(".msg").count() == 0
        page.fill("#api_key", "wrong-key-123")
        ask(page, "hello")
        assert "API key" in page.locator(".error").last.text_content()
        page.close()


def test_the_page_calls_only_routes_the_server_has_with_fields_it_accepts(loaded):
    """Without a browser: every URL the page's script fetches is a route, and its request body validates."""
    import re

    from starlette.testclient import TestClient

    from bessemer.config.schema import ServeSection
    from bessemer.infer.openai_api import ChatCompletionRequest
    from bessemer.infer.server import build_app, build_engine

    cfg = ServeSection()
    app = build_app(loaded, build_engine(loaded, cfg), cfg)
    html = TestClient(app, base_url="http://127.0.0.1").get("/")  # no lifespan: the engine stays off
    assert html.status_code == 200 and "script-src 'unsafe-inline'" in html.headers["content-security-policy"]
    urls = set(re.findall(r'fetch\("([^"]+)"', html.text))
    assert urls == {"/v1/chat/completions", "/health"}
    assert urls <= {route.path for route in app.routes}
    body = re.search(r"const body = \{(.*?)\};", html.text, re.S).group(1)
    keys = set(re.findall(r"^\s*(\w+):", body, re.M))
    assert keys == {"messages", "stream", "temperature", "max_tokens"}
    sample = {
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "temperature": 0.7,
        "max_tokens": 16,
    }
    ChatCompletionRequest.model_validate(sample)
