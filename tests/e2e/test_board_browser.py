"""The Board in a real browser (Debian's headless Chromium through Playwright; nothing is downloaded): fill the Train
form, watch the memory estimate follow the batch size, start a 3-step LoRA run of SmolLM2, reload the page mid-run
and find it reattached, see the loss plot and the finished state, chat with the adapter; and a restarted Board
process reattaching to a run that outlived it. Screenshots of each tab go to docs/board/ (the README shows them)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SHOTS = os.path.join(ROOT, "docs", "board")
MODEL = "smollm2-135m-instruct"


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright; its browsers are not needed)"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Board:
    """`tuneforge board` as its own process (as a user starts it), on a runs folder."""

    def __init__(self, runs_dir: str, log_path: str):
        self.runs_dir, self.log_path = runs_dir, log_path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "board", "--port", str(self.port), "--runs-dir",
                                      runs_dir], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the Board exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the Board did not answer within 120 s:\n{self.tail()}")

    def tail(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read()[-3000:].decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def _page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    return page


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def _wait_text(page, selector: str, needle: str, timeout_s: float = 60) -> str:
    page.wait_for_function("([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
                           arg=[selector, needle], timeout=timeout_s * 1000)
    return _text(page, selector)


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def _set_text(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def _fill_run(page, output_dir: str, max_steps: int) -> None:
    """Model, dataset and the small run's settings, as a user types them."""
    model = page.locator("#tf-model input")
    model.fill(MODEL)
    model.press("Enter")
    ds = page.locator("#tf-dataset input")
    ds.click()
    ds.fill("identity")
    ds.press("Enter")
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('#tf-dataset').innerText.includes('identity')")
    _set_number(page, "tf-max-steps", max_steps)
    _set_number(page, "tf-key-cutoff_len", 64)
    _set_number(page, "tf-key-logging_steps", 1)
    _set_text(page, "tf-output-dir", output_dir)


def _shot(page, name: str) -> None:
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"))


def _job(runs_dir: str) -> dict:
    (job_id,) = [d for d in os.listdir(runs_dir) if os.path.isfile(os.path.join(runs_dir, d, "job.json"))]
    with open(os.path.join(runs_dir, job_id, "job.json")) as fh:
        return json.load(fh)


def test_train_monitor_reload_and_chat_in_the_browser(browser, tmp_path):
    board = Board(str(tmp_path / "runs"), str(tmp_path / "board.log"))
    try:
        page = _page(browser)
        page.goto(board.url)
        page.wait_for_selector("#tf-model")
        _wait_text(page, "#tf-estimate", "GiB")
        _fill_run(page, str(tmp_path / "out"), 3)
        # the dataset preview: the first examples through the chat template, supervised tokens highlighted
        _wait_text(page, "#tf-data-note", "identity:", 60)
        page.wait_for_function("() => document.querySelector('#tf-data-preview').innerText.includes('row 0')", timeout=30_000)

        # the estimate follows the batch size
        _wait_text(page, "#tf-estimate", "batch 8 x 64")
        before = _text(page, "#tf-estimate")
        _set_number(page, "tf-key-per_device_train_batch_size", 1)
        after = _wait_text(page, "#tf-estimate", "batch 1 x 64")
        assert after != before
        assert "fits" in after and "weights" in after and "activations" in after

        page.locator("#tf-start").click()
        status = _wait_text(page, "#tf-status", "running", 60)
        job_id = _job(board.runs_dir)["id"]
        assert job_id in status
        page.evaluate("window.scrollTo(0, 0)")
        page.set_viewport_size({"width": 1280, "height": 1500})  # the form, the estimate and the data preview
        _shot(page, "train")
        page.set_viewport_size({"width": 1280, "height": 900})

        page.reload()  # mid-run: the page comes back attached to the run, the form as it was
        page.wait_for_selector("#tf-model")
        _wait_text(page, "#tf-status", job_id, 30)
        _wait_text(page, "#tf-dataset", "identity", 30)

        page.locator("#tf-tab-monitor-button").click()
        status = _wait_text(page, "#tf-status", "finished", 180)
        assert "step 3/3" in status, status
        # vega draws the curve: grid/axis lines plus the loss line's path inside the plot's marks
        page.wait_for_function("() => document.querySelectorAll('#tf-loss-plot line').length > 3", timeout=30_000)
        page.wait_for_timeout(2000)  # the plot's entry transition, for the screenshot
        page.wait_for_function("() => document.querySelector('#tf-log textarea').value.includes('done:')", timeout=30_000)
        _shot(page, "monitor")

        page.locator("#tf-tab-chat-button").click()
        page.wait_for_function("(o) => document.querySelector('#tf-chat-adapter input').value.includes(o)",
                               arg=str(tmp_path / "out"), timeout=30_000)
        msg = page.locator("#tf-chat-message textarea")
        msg.fill("Who are you?")
        page.locator("#tf-chat-send").click()
        page.wait_for_function("() => { const b = document.querySelector('#tf-chatbot [data-testid=bot]');"
                               " return b && b.innerText.trim().length > 3; }", timeout=120_000)
        assert "Who are you?" in _text(page, "#tf-chatbot [data-testid=user]")
        _shot(page, "chat")
        for tab in ("evaluate", "export"):
            page.locator(f"#tf-tab-{tab}-button").click()
            page.wait_for_selector(f"#tf-{tab}-run" if tab == "export" else "#tf-eval-run")
            _shot(page, tab)
    finally:
        board.close()


def test_a_restarted_board_reattaches_to_the_run_that_outlived_it(browser, tmp_path):
    runs_dir = str(tmp_path / "runs")
    board = Board(runs_dir, str(tmp_path / "board1.log"))
    try:
        page = _page(browser)
        page.goto(board.url)
        page.wait_for_selector("#tf-model")
        _fill_run(page, str(tmp_path / "out"), 40)
        _set_number(page, "tf-key-per_device_train_batch_size", 1)
        page.locator("#tf-start").click()
        _wait_text(page, "#tf-status", "running", 60)
        page.close()
    finally:
        board.close()
    job = _job(runs_dir)
    os.kill(job["pid"], 0)  # the run outlived its Board (raises if it is gone)

    board = Board(runs_dir, str(tmp_path / "board2.log"))
    try:
        page = _page(browser)
        page.goto(board.url)
        page.wait_for_selector("#tf-model")
        status = _wait_text(page, "#tf-status", job["id"], 30)
        assert "running" in status or "finished" in status, status
        _wait_text(page, "#tf-dataset", "identity", 30)  # the form comes back from the browser's storage
        status = _wait_text(page, "#tf-status", "finished", 180)
        assert "step 40/40" in status, status
    finally:
        board.close()
