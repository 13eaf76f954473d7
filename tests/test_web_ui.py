"""The web page in a real headless browser (Debian's chromium, driven by Playwright) against the app on
a local Ray: a user's whole journey, bad uploads, the operator's promote, a wrong key, the headers.

Screenshots of the three pages at 1280 and 375 px go to $PSTYLE_UI_SCREENSHOTS when it is set (how
docs/ui/ is made), else to a temporary folder.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fixtures.ab import HIGH, LOW, traffic
from fixtures.serving import local_serve, write_adapter
from fixtures.tiny import tiny_serve_config
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from pstyle.data.photos import photo_paths
from pstyle.serving.api_keys import create_user
from pstyle.serving.experiments import Experiment, ExperimentStore, production_vs_candidate
from pstyle.store import LocalStore
from pstyle.store.events import read_events
from pstyle.store.registry import Registry
from pstyle.training.bundled import bundled_model_dir

WIDTHS = (1280, 375)
COHORT = ("uma", "vic")  # users in the operator's experiment
MARKUP_NAME = "<img src=x onerror=alert(1)>.png"  # a style file's name: the page must show it as text


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The app on the bundled base (real renders for the screenshots), a new user, an admin, and a
    running production-vs-candidate experiment with simulated exposures and ratings."""
    root = tmp_path_factory.mktemp("ui")
    store = LocalStore(root / "store")
    registry = Registry(store)
    base = bundled_model_dir()
    registry.publish_base("base", base, aliases=["production"])
    for seed, user in enumerate(COHORT):
        registry.publish_adapter(
            user, write_adapter(base, user, seed, root / f"{user}-1"), aliases=["production"]
        )
        registry.publish_adapter(
            user, write_adapter(base, user, seed + 9, root / f"{user}-2"), aliases=["candidate"]
        )
    ExperimentStore(store).create(Experiment("ui-test", production_vs_candidate(), users=COHORT))
    traffic(store, {"production": LOW, "candidate": HIGH}, COHORT, "ui-test")
    keys = {"mia": create_user(store, "mia"), "ops": create_user(store, "ops", admin=True)}
    config = tiny_serve_config(str(store.root), size=128)  # 128 px: results a person can judge
    with local_serve(config) as url:
        yield {"url": url, "keys": keys, "store": store, "registry": registry, "root": root}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing: `make setup` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("PSTYLE_UI_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Page, folder: Path, name: str) -> None:
    """The page at each width, whole; at 375 px nothing may scroll sideways."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(100)
        if width < 400:
            assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} scrolls sideways"
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/ui/")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard submits the form


def photo(root: Path, side: int = 320) -> Path:
    """A real photograph (scikit-learn's china.jpg), small enough for the test's upload cap."""
    path = root / "china.jpg"
    if not path.exists():
        image = Image.open(photo_paths()["china"]).convert("RGB")
        image.thumbnail((side, side))
        image.save(path, quality=90)
    return path


def style_images(root: Path) -> list[Path]:
    """Three real style images; one named like markup, which the page must show as text."""
    paths = photo_paths(include_styles=True)
    out = []
    for name in ("crowd_illustration", "nuclei_micrograph", "flower"):
        image = Image.open(paths[name]).convert("RGB")
        image.thumbnail((160, 160))
        path = root / (MARKUP_NAME if name == "flower" else f"{name}.png")
        image.save(path)
        out.append(path)
    return out


PIXEL_DIFFERENCE = """([a, b]) => {
  const pixels = (img) => {
    const canvas = document.createElement("canvas");
    canvas.width = 64; canvas.height = 64;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0, 64, 64);
    return context.getImageData(0, 0, 64, 64).data;
  };
  const [p, q] = [pixels(document.getElementById(a)), pixels(document.getElementById(b))];
  let sum = 0;
  for (let i = 0; i < p.length; i++) sum += Math.abs(p[i] - q[i]);
  return sum / p.length / 255;
}"""


def wait_for_feedback(store: LocalStore, user: str, rating: int, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in read_events(store, "feedback", user) if e["rating"] == rating]
        if found:
            return found[-1]
        time.sleep(0.3)
    raise AssertionError(f"no feedback event with rating {rating} from {user} in the store")


def test_page_headers_and_fixed_file_list(site: dict) -> None:
    page = requests.get(f"{site['url']}/ui/", timeout=30)
    csp = page.headers["Content-Security-Policy"]
    assert page.ok and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "<script>" not in page.text  # no inline code at all
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/ui/../app.py", "/ui/%2e%2e%2fapp.py", "/ui/nope.js"):
        assert requests.get(f"{site['url']}{path}", timeout=30).status_code == 404
    redirect = requests.get(f"{site['url']}/ui", timeout=30, allow_redirects=False)
    assert redirect.status_code == 308


def test_wrong_key_shows_invalid_and_no_data(site: dict, page: Page) -> None:
    sign_in(page, site["url"], "psk.mia.not-the-secret")
    expect(page.locator("#signin-error")).to_contain_text("invalid API key")
    expect(page.locator("#nav")).to_be_hidden()
    expect(page.locator("#page-studio")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_the_api_behind_the_page_refuses_what_it_should(site: dict) -> None:
    url, keys = site["url"], site["keys"]

    def call(method: str, path: str, user: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {keys[user]}"}
        return requests.request(method, f"{url}{path}", headers=headers, timeout=30, **kwargs)

    me = call("GET", "/v1/me", "mia").json()
    assert (me["user"], me["admin"], me["limits"]["max_upload_bytes"]) == ("mia", False, 2**20)
    for image_id in ("0" * 64, "..%2Fstyle_set.json", "x"):
        missing = call("GET", f"/v1/me/styles/{image_id}", "mia")
        assert missing.status_code == 404 and "error" in missing.json()
    assert call("POST", "/v1/admin/experiments/ui-test/promote", "mia").status_code == 403
    assert call("GET", "/v1/admin/experiments", "mia").status_code == 403
    assert call("POST", "/v1/admin/experiments/ui-test/promote", "ops", data="{no").status_code == 400
    assert call("POST", "/v1/admin/experiments/nope/promote", "ops").status_code == 404
    empty = Experiment("no-data", production_vs_candidate()).to_dict()
    assert call("POST", "/v1/admin/experiments", "ops", json=empty).ok
    refused = call("POST", "/v1/admin/experiments/no-data/promote", "ops")
    assert refused.status_code == 409 and "no winner" in refused.json()["error"]
    assert call("POST", "/v1/admin/experiments/no-data/stop", "ops").ok


def test_user_journey_style_stylize_rate_personalize(site: dict, page: Page, shots: Path) -> None:
    url, store, root = site["url"], site["store"], site["root"]
    sign_in(page, url, site["keys"]["mia"])
    expect(page.locator("#who-user")).to_have_text("mia")
    assert "psk." not in page.url and page.context.cookies() == []  # the key is in sessionStorage only
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select')].filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabelled == []

    # Style set: upload, then the thumbnails; a file name that looks like markup stays text.
    page.get_by_label("Style images (replace the set)").set_input_files([str(p) for p in style_images(root)])
    page.get_by_role("button", name="Upload style set").click()
    expect(page.locator("#style-thumbs img")).to_have_count(3)
    assert page.locator("#style-thumbs [onerror]").count() == 0
    assert page.locator("#style-thumbs img").nth(2).get_attribute("title") == MARKUP_NAME

    # Stylize: the result shows, is a real image, differs from the photo, and shifts no layout.
    page.get_by_label("Photo to stylize").set_input_files(str(photo(root)))
    expect(page.locator("#original")).to_have_attribute("src", re.compile(r"^blob:"))
    frame_before = page.locator("#result").locator("..").bounding_box()
    page.get_by_role("button", name="Stylize", exact=True).click()
    expect(page.locator("#result-meta")).to_contain_text("base model (zero-shot)")
    page.wait_for_function("document.getElementById('result').naturalWidth > 0")
    assert page.locator("#result").locator("..").bounding_box() == frame_before
    assert page.evaluate(PIXEL_DIFFERENCE, ["original", "result"]) > 0.02
    expect(page.locator("#download")).to_be_visible()

    # Rate it: the feedback lands in the store, for this image.
    expect(page.locator("#history li")).to_have_count(1)
    page.get_by_role("button", name="4 stars").click()
    expect(page.locator("#rating-status")).to_contain_text("rated 4/5")
    assert wait_for_feedback(store, "mia", 4)["adapter_version"] == "base"
    screenshot(page, shots, "studio")

    # Personalize: the progress bar reaches done, and the next result is the new adapter's.
    page.get_by_role("link", name="My style").click()
    expect(page.locator("#versions-empty")).to_be_visible()
    page.get_by_role("button", name="Personalize").click()
    expect(page.locator("#job-status")).to_contain_text("Done: adapter v1", timeout=300_000)
    assert page.evaluate("(p => p.value === p.max && p.max > 1)(document.getElementById('job-progress'))")
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    expect(page.locator("#versions tbody")).to_contain_text("production")
    expect(page.locator("#job-after-meta")).to_contain_text("adapter v1", timeout=30_000)
    expect(page.locator("#job-before-meta")).to_contain_text("base model")
    screenshot(page, shots, "mystyle")
    page.get_by_role("link", name="Studio").click()
    page.get_by_role("button", name="Stylize", exact=True).click()
    expect(page.locator("#result-meta")).to_contain_text("adapter v1")


def test_bad_uploads_show_the_api_message_then_a_good_one_works(site: dict, page: Page) -> None:
    root = site["root"]
    sign_in(page, site["url"], site["keys"]["mia"])
    expect(page.locator("#who-user")).to_have_text("mia")
    good = photo(root).read_bytes()
    bad = {
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "not an image"),
        "cut.jpg": (good[: len(good) // 3], "truncated"),
    }
    for name, (data, message) in bad.items():
        (root / name).write_bytes(data)
        page.get_by_label("Photo to stylize").set_input_files(str(root / name))
        page.get_by_role("button", name="Stylize", exact=True).click()
        expect(page.locator("#stylize-error")).to_contain_text(message)
    page.get_by_label("Style images (replace the set)").set_input_files(str(root / "drawing.svg"))
    page.get_by_role("button", name="Upload style set").click()
    expect(page.locator("#styles-error")).to_contain_text("drawing.svg")
    page.get_by_label("Photo to stylize").set_input_files(str(photo(root)))
    page.get_by_role("button", name="Stylize", exact=True).click()
    expect(page.locator("#result-meta")).to_contain_text("Result:")
    expect(page.locator("#stylize-error")).to_have_text("")


def test_a_stylize_call_the_front_lost_is_sent_once_more_and_a_serve_error_is_shown(
    site: dict, page: Page
) -> None:
    """HAProxy's own 500 page (no x-request-id) answers a call that was inside a dying Ingress
    replica; stylize is idempotent, so the page sends it once more. A 500 that Serve wrote is shown."""
    sign_in(page, site["url"], site["keys"]["mia"])
    expect(page.locator("#who-user")).to_have_text("mia")
    page.get_by_label("Photo to stylize").set_input_files(str(photo(site["root"])))
    answers = [
        {"status": 500, "content_type": "text/plain", "body": "Internal Server Error"},  # HAProxy's page
        None,  # the real app
        {"status": 500, "json": {"error": "adapter blob is corrupt"}, "headers": {"x-request-id": "r1"}},
    ]
    seen = []

    def answer(route: Route) -> None:
        seen.append(route.request.method)
        reply = answers[len(seen) - 1]
        if reply is None:
            route.continue_()
        else:
            route.fulfill(**reply)

    page.route("**/v1/stylize", answer)
    page.get_by_role("button", name="Stylize", exact=True).click()
    expect(page.locator("#result-meta")).to_contain_text("Result:")
    expect(page.locator("#stylize-error")).to_have_text("")
    assert seen == ["POST", "POST"]
    page.get_by_role("button", name="Stylize", exact=True).click()
    expect(page.locator("#stylize-error")).to_have_text("adapter blob is corrupt")
    assert len(seen) == 3


def test_operator_sees_the_experiment_and_promote_moves_the_alias(
    site: dict, page: Page, shots: Path
) -> None:
    registry = site["registry"]
    sign_in(page, site["url"], site["keys"]["ops"])
    expect(page.locator("#who-user")).to_have_text("ops (admin)")
    page.get_by_role("link", name="Operator").click()
    card = page.locator('article[data-experiment="ui-test"]')
    expect(card).to_be_visible()
    rows = card.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("production")
    expect(rows.nth(1)).to_contain_text("candidate")
    for row in (rows.nth(0), rows.nth(1)):
        expect(row.locator("td").nth(2)).to_have_text("50")  # exposures
        expect(row.locator("td").nth(4)).to_have_text("60")  # ratings
    expect(card.locator("svg circle")).to_have_count(2)
    expect(card.locator(".decision")).to_contain_text("Automatic policy would")
    expect(page.locator("#stats")).to_contain_text("base_version")
    screenshot(page, shots, "operator")

    page.once("dialog", lambda dialog: dialog.accept())
    card.get_by_role("button", name="Promote").click()
    expect(card.locator(".meta")).to_contain_text("promoted")
    for user in COHORT:
        aliases = registry.aliases("adapter", user)
        assert aliases["production"] == aliases["candidate"] == 2


def test_screenshot_images_are_real(shots: Path) -> None:
    """Runs after the journeys: every page was captured at both widths."""
    for name in ("studio", "mystyle", "operator"):
        for width in WIDTHS:
            with Image.open(io.BytesIO((shots / f"{name}-{width}.png").read_bytes())) as image:
                assert image.width == width and image.height > 400
