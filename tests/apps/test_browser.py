"""End to end: `mmseq demo all` on localhost, driven in headless Chromium (Debian's chromium through Playwright;
no browser is downloaded). Each tab gets a good and a bad upload; two users at once each get their own answer;
the page never asks for anything outside 127.0.0.1. Screenshots go to the test's temporary folder, and also to
$MMSEQ_SCREENSHOTS when set (how docs/screenshots/ is made; $MMSEQ_DEMO_VISION_CHECKPOINT picks the vision
model: a run or model folder, or "shipped"; a tiny random one otherwise)."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mmseq.apps.common import examples_dir
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
STARTUP_S = 120


def _chromium() -> str | None:
    for name in CHROMIUM_PATHS:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def proxy_trap():
    """A local listener set as the server's HTTP(S) proxy: any request the server makes to another host lands here
    (and is recorded, then refused) instead of leaving the machine."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    caught: list[str] = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    caught.append(conn.recv(200).decode(errors="replace").split("\r\n")[0])
                except OSError:
                    caught.append("(connection)")

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", caught
    listener.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_segmenter, proxy_trap):
    """`mmseq demo all` in a subprocess; yields its URL."""
    tmp = tmp_path_factory.mktemp("demo_server")
    port = _free_port()
    vision = os.environ.get("MMSEQ_DEMO_VISION_CHECKPOINT") or str(tiny_segmenter)
    checkpoint = [] if vision == "shipped" else ["--checkpoint", f"vision={vision}"]
    exe = Path(sys.executable).with_name("mmseq")
    proxy = proxy_trap[0]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio"), "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",
           "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "ALL_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
           "all_proxy": proxy, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = subprocess.Popen([str(exe), "demo", "all", "--port", str(port), *checkpoint, "--max-file-size", "5"],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump():
        for line in proc.stdout:
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline, url = time.monotonic() + STARTUP_S, None
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line.startswith("mmseq demo: serving"):
            url = line.rsplit(" at ", 1)[1].strip()
    if url is None:
        proc.kill()
        pytest.fail("the demo did not start:\n" + "".join(log[-40:]))
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    path = _chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make system-deps` installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium, or `make system-deps`)")
    with sync_api.sync_playwright() as p:
        # a fake microphone (a beeping tone) that needs no permission prompt, for the recording test
        args = ["--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
        b = p.chromium.launch(executable_path=path, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture(scope="module")
def outside() -> list[str]:
    """Every request a page made to anything but the demo server (must stay empty: the demo works offline)."""
    return []


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _open(browser, url: str, outside: list[str], permissions: list[str] | None = None):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=permissions or [])
    page = context.new_page()
    page.set_default_timeout(90_000)
    host = url.rstrip("/")

    def check(route):
        if route.request.url.startswith((host, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", check)
    page.goto(url)
    page.wait_for_selector("#vision-input")
    return page


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _upload(page, elem: str, path: Path) -> None:
    clear = page.locator(f"#{elem} button[aria-label='Clear']")
    if clear.count():  # a file is loaded: clear it first, as a person would, and let its (empty) answer arrive
        clear.first.click()
        status = elem.replace("-input", "-status")
        page.wait_for_function("id => !(document.getElementById(id)?.innerText || '').trim()", arg=status)
    page.locator(f"#{elem} input[type=file]").set_input_files(str(path))


def _example(page, name: str) -> None:
    """Click a shipped example (the file is served from apps/examples, the only folder allowed)."""
    page.get_by_role("button", name=name, exact=True).click()


def _wait_text(page, elem: str, text: str) -> str:
    page.wait_for_function("([id, t]) => (document.getElementById(id)?.innerText || '').includes(t)", arg=[elem, text])
    return page.locator(f"#{elem}").inner_text()


def _image_size(page, elem: str) -> tuple[int, int]:
    page.wait_for_function("id => { const i = document.querySelector('#' + id + ' img');"
                           " return i && i.complete && i.naturalWidth > 0; }", arg=elem)
    return tuple(page.eval_on_selector(f"#{elem} img", "i => [i.naturalHeight, i.naturalWidth]"))


def _img_src(page, elem: str) -> str:
    return page.eval_on_selector(f"#{elem} img", "i => i.src")


def _shoot(page, shots: Path, name: str, publish: bool = False) -> Path:
    """Screenshot the page into the test's folder (and, with ``publish``, into $MMSEQ_SCREENSHOTS)."""
    path = shots / name
    page.screenshot(path=str(path), full_page=True)
    if publish and os.environ.get("MMSEQ_SCREENSHOTS"):
        out = Path(os.environ["MMSEQ_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    assert path.stat().st_size > 10_000
    return path


def test_vision_tab(server, browser, outside, shots, fakes):
    page = _open(browser, server, outside)
    _example(page, "street_scene.png")
    status = _wait_text(page, "vision-status", "Segmented street_scene.png")
    assert "(256 x 512 pixels)" in status
    assert _image_size(page, "vision-overlay") == (256, 512)
    shares = page.locator("#vision-shares tr").all_inner_texts()
    assert len(shares) >= 2 and all("%" in row for row in shares[1:])
    assert page.locator("#vision-legend .mmseq-legend-item").count() == 19
    _shoot(page, shots, "demo_vision.png", publish=True)
    before = _img_src(page, "vision-overlay")
    page.locator("#vision-opacity input[type=number]").fill("0.9")
    page.locator("#vision-opacity input[type=number]").press("Enter")
    page.wait_for_function("([id, s]) => document.querySelector('#' + id + ' img').src !== s",
                           arg=["vision-overlay", before])
    _upload(page, "vision-input", fakes["not_an_image.png"])
    error = _wait_text(page, "vision-status", "Error")
    assert "not_an_image.png is not an image" in error and "Traceback" not in page.content()
    _shoot(page, shots, "demo_vision_error.png")
    page.context.close()


def test_medical_tab(server, browser, outside, shots, fakes):
    page = _open(browser, server, outside)
    _tab(page, "Medical")
    _example(page, "chest_phantom.nii.gz")
    status = _wait_text(page, "medical-status", "Tokenized chest_phantom.nii.gz")
    assert "3,468 tokens" in status
    stats = page.locator("#medical-stats").inner_text()
    assert "3,468" in stats and "fewer bits than the 16-bit input" in stats and "PSNR" in stats
    for view in ("medical-axial", "medical-coronal", "medical-sagittal"):
        h, w = _image_size(page, view)
        assert w > 2 * h  # input | reconstruction | error
    report = _wait_text(page, "medical-report", "Findings stated")
    assert len(report) > 200
    axial = _img_src(page, "medical-axial")
    page.get_by_label("bone").check()
    page.wait_for_function("([id, s]) => document.querySelector('#' + id + ' img')?.src !== s",
                           arg=["medical-axial", axial])
    bone = _img_src(page, "medical-axial")
    page.get_by_label("lung").check()
    page.wait_for_function("([id, s]) => document.querySelector('#' + id + ' img')?.src !== s",
                           arg=["medical-axial", bone])
    for view in ("medical-axial", "medical-coronal", "medical-sagittal"):
        _image_size(page, view)
    _shoot(page, shots, "demo_medical.png", publish=True)
    _upload(page, "medical-input", fakes["not_a_volume.nii.gz"])
    error = _wait_text(page, "medical-status", "Error")
    assert "not_a_volume.nii.gz is not a readable NIfTI file" in error
    _shoot(page, shots, "demo_medical_error.png")
    page.context.close()


def test_audio_tab(server, browser, outside, shots, fakes):
    page = _open(browser, server, outside)
    _tab(page, "Audio")
    _upload(page, "audio-input", examples_dir() / "keywords.wav")
    status = _wait_text(page, "audio-status", "keywords.wav: seven")
    assert "Over time:" in status and "yes" in status and "stop" in status
    top = page.locator("#audio-topk").inner_text().split("\n")
    assert top[:4] == ["Top labels", "seven", "seven", "100%"], top  # title, best label, then the list
    _image_size(page, "audio-signal")
    _image_size(page, "audio-timeline")
    _shoot(page, shots, "demo_audio.png", publish=True)
    _upload(page, "audio-input", fakes["not_a_clip.wav"])
    error = _wait_text(page, "audio-status", "Error")
    assert "not_a_clip.wav is not a readable audio file" in error
    _shoot(page, shots, "demo_audio_error.png")
    page.context.close()


def test_audio_recording(server, browser, outside):
    page = _open(browser, server, outside, permissions=["microphone"])
    _tab(page, "Audio")
    page.locator("#audio-input button[aria-label='Record audio']").click()
    page.locator("#audio-input button.record-button").click()
    page.wait_for_timeout(2000)
    page.locator("#audio-input button.stop-button").first.click()
    page.wait_for_selector("#audio-status .mmseq-status")
    status = page.locator("#audio-status").inner_text()
    assert "Error" not in status and " classified in " in status  # the recording arrived as audio we can read
    _image_size(page, "audio-signal")
    page.context.close()


def test_server_refuses_uploads_over_the_limit(server):
    import httpx

    big = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.png", b"0" * 6 * 2**20)}, timeout=60)
    assert big.status_code == 413  # --max-file-size 5
    small = httpx.post(f"{server}gradio_api/upload", files={"files": ("small.png", b"0" * 1000)}, timeout=60)
    assert small.status_code == 200


def test_two_users_at_once_get_their_own_results(server, browser, outside, tmp_path):
    sizes = {"first.png": (120, 200), "second.png": (90, 330)}
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    pages = {name: _open(browser, server, outside) for name in sizes}
    for name, page in pages.items():  # both requests are in flight before either answer is read
        _upload(page, "vision-input", tmp_path / name)
    for name, page in pages.items():
        h, w = sizes[name]
        status = _wait_text(page, "vision-status", f"Segmented {name}")
        assert f"({h} x {w} pixels)" in status
        assert _image_size(page, "vision-overlay") == (h, w)
        page.context.close()


def test_nothing_was_asked_of_other_hosts(server, outside, proxy_trap):
    assert server.startswith("http://127.0.0.1:")
    assert outside == []  # the pages
    assert proxy_trap[1] == []  # the server
