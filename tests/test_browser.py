"""The page in headless Chromium (Debian's build, driven by playwright): what a researcher sees and does."""

from __future__ import annotations

import io
import os
import re

import pytest
from PIL import Image

pytest.register_assert_rewrite("app_fixtures")
from app_fixtures import ASSETS, ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, EXAMPLES, MAPS, VARIANTS, bad_photo

pytest_plugins = ["app_fixtures"]
pytestmark = pytest.mark.browser

RHO = re.compile(r"ρ = [+-]\d\.\d{3}")
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_server):
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(app_server.url)
    pg.wait_for_selector("#run")
    yield pg
    ctx.close()


def upload_photo(page, path) -> None:
    page.get_by_role("tab", name="Upload a photo").click()
    clear = page.locator("#photo button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.locator("#photo input[type=file]").set_input_files(str(path))


def overlay_srcs(page) -> list[str]:
    return [page.locator(f"#{v}-{m} img").get_attribute("src") for v in VARIANTS for m in MAPS]


def wait_for_results(page) -> None:
    for v in VARIANTS:
        for m in MAPS:
            page.wait_for_selector(f"#{v}-{m} img")
            page.wait_for_function(f"() => /ρ = [+-]\\d|no human map/.test("
                                   f"document.querySelector('#rho-{v}-{m}').innerText)")


def colour_scale(page) -> str:
    """The page's colour scale: labelled low → high, drawn as a gradient; returns the gradient."""
    bar = page.locator("#colorbar")
    text = bar.inner_text()
    assert "low" in text and "high" in text, text
    ramp = bar.locator(".colorbar-ramp")
    assert ramp.bounding_box()["width"] > 150 and ramp.bounding_box()["height"] >= 8
    return ramp.evaluate("e => getComputedStyle(e).backgroundImage")


def save_screenshot(page, path, width: int = 1440) -> None:
    """A full-page screenshot kept small for the repository: an adaptive 256-colour palette, optimised."""
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    assert shot.width == width
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def paint_stroke(page) -> None:
    """Drag the brush across the middle of the photo, as a user marking what matters."""
    canvas = page.locator("#painter canvas").first
    page.wait_for_function("() => { const c = document.querySelector('#painter canvas');"
                           " return c && c.getBoundingClientRect().height > 100; }")
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.42, box["y"] + box["height"] * 0.35
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 16):
        page.mouse.move(x0 + k * box["width"] * 0.008, y0 + k * box["height"] * 0.02, steps=2)
    page.mouse.up()


def test_upload_paint_compare_and_restyle(page):
    upload_photo(page, EXAMPLES[1])
    # the photo becomes the painting canvas
    page.wait_for_selector("#painter canvas")
    page.wait_for_timeout(1500)
    paint_stroke(page)
    page.locator("#run").click()
    wait_for_results(page)

    rhos = {f"{v}-{m}": page.locator(f"#rho-{v}-{m}").inner_text() for v in VARIANTS for m in MAPS}
    assert all(RHO.search(t) for t in rhos.values()), rhos
    assert page.locator("#human-map img").count() == 1
    assert "human map: painted on the photo" in page.locator("#summary").inner_text()
    table = page.locator("#scores").inner_text()
    assert "Threshold-Grad-CAM" in table and "Δρ" in table and re.search(r"[+-]0\.\d{3}", table)
    assert "sha256" in page.locator("#provenance").inner_text()
    page.wait_for_selector("#export", state="visible")
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "screenshot_compare.png"), full_page=True)

    # a colormap change redraws the overlays from the cached comparison: the timing line (written only
    # when the CAMs are computed) stays as it was
    summary, before = page.locator("#summary").inner_text(), overlay_srcs(page)
    scale = colour_scale(page)
    page.locator("#cmap input").click()
    page.get_by_role("option", name="viridis").click()
    page.wait_for_function(f"() => document.querySelector('#dcls-gradcam img').src !== {before[2]!r}")
    after = overlay_srcs(page)
    assert all(a != b for a, b in zip(after, before))
    # the colour scale follows the colormap
    page.wait_for_function("() => /viridis/.test(document.querySelector('#colorbar').innerText)")
    assert colour_scale(page) != scale
    assert page.locator("#summary").inner_text() == summary
    assert {k: page.locator(f"#rho-{k}").inner_text() for k in rhos} == rhos


def test_two_extra_methods_get_their_columns_and_the_apis_rho(page, client):
    """Picking HiResCAM and LayerCAM adds a baseline | DCLS pair of maps for each, with the ρ the API gives for the
    same record and methods; faithfulness adds its columns to the score table; dropping them hides them."""
    from app_fixtures import compare

    extra = {"hirescam": "HiResCAM", "layercam": "LayerCAM"}
    page.locator("#record-index input").fill("3")
    page.locator("#record-index input").press("Enter")
    for title in extra.values():
        page.locator("#methods input").click()
        page.get_by_role("option", name=title, exact=True).click()
    page.locator("#advanced").get_by_text("Faithfulness and CAM layer").click()
    page.locator("#faithfulness input[type=checkbox]").check()
    page.locator("#run").click()
    for m in extra:
        page.wait_for_selector(f"#method-{m}", state="visible")
    wait_for_results(page)
    for m in extra:
        for v in VARIANTS:
            page.wait_for_selector(f"#{v}-{m} img")
            page.wait_for_function(f"() => /ρ = [+-]\\d/.test(document.querySelector('#rho-{v}-{m}').innerText)")
    shown = {(v, m): RHO.findall(page.locator(f"#rho-{v}-{m}").inner_text())
             for v in VARIANTS for m in (*MAPS, *extra)}
    manifest, _, _ = compare(client, index=3, methods=",".join((*MAPS, *extra)), faithfulness=True)
    want = {(v, m): [f"ρ = {manifest['models'][v]['scores'][m]['spearman']:+.3f}"] for v, m in shown}
    assert shown == want
    table = page.locator("#scores").inner_text()
    assert all(t in table for t in extra.values()) and "deletion" in table and "ROAD" in table
    deletion = f"{manifest['models']['dcls']['faithfulness']['layercam']['deletion']:.3f}"
    assert deletion in table
    # methods left out of the next comparison leave the page
    for title in extra.values():
        page.locator("#methods .token").filter(has_text=title).locator(".token-remove").click()
    page.locator("#faithfulness input[type=checkbox]").uncheck()
    page.locator("#run").click()
    for m in extra:
        page.wait_for_selector(f"#method-{m}", state="hidden")
    page.wait_for_function("() => !/deletion/.test(document.querySelector('#scores').innerText)")


def test_bad_upload_and_missing_checkpoint_leave_the_page_working(page, tmp_path):
    upload_photo(page, bad_photo("text_as_jpg", tmp_path))
    page.get_by_text("notes.jpg is not an image").first.wait_for()
    page.locator("#run").click()
    page.locator("#status-box").get_by_text("photo: notes.jpg is not an image").wait_for()
    # the input stays where the user put it
    assert "notes" in page.locator("#photo").inner_text()

    upload_photo(page, EXAMPLES[0])
    page.locator("#run").click()
    wait_for_results(page)
    # an input without a human map says so where the human map would be
    assert "no human map" in page.locator("#human-head").inner_text()
    assert page.locator("#human-map img").count() == 0
    shown = overlay_srcs(page)

    page.locator("#arch input").click()
    page.get_by_role("option", name="convnext_tiny").click()
    # before the click the status says plainly that the files are not here and will not be fetched
    page.locator("#arch-status").get_by_text("downloads are off").first.wait_for()
    page.locator("#run").click()
    status = page.locator("#status-box")
    status.get_by_text("checkpoints are not available").wait_for()
    text = status.inner_text()
    for part in ("convnext_tiny_1k_224_ema.pth", "convnext_dcls_tiny_1k_224_ema.pth", "DCLSVIZ_CHECKPOINT_DIR",
                 "previous run"):
        assert part in text, (part, text)
    for noise in ("urllib3", "Traceback", "Errno", "HTTPSConnectionPool"):
        assert noise not in text, (noise, text)
    # said once, in the status box: no toast repeats it
    assert page.get_by_text("checkpoints are not available").count() == 1
    # the previous results stay, marked as such
    assert overlay_srcs(page) == shown
    page.get_by_role("button", name="Use the bundled demo pair instead").click()
    page.wait_for_selector("#status-box", state="hidden")
    wait_for_results(page)
    assert page.locator("#arch input").input_value() == "demo"
    assert all("no human map" in page.locator(f"#rho-{v}-{m}").inner_text() for v in VARIANTS for m in MAPS)
    assert EXAMPLES[0].name in page.locator("#summary").inner_text()


def test_clickme_comparison_with_colour_scales_for_the_readme(page):
    """A ClickMe record compared: the human-map preview follows the colormap, and the page with its colour
    scale is the README's screenshot."""
    page.wait_for_selector("#rec-human img")
    preview = page.locator("#rec-human img").get_attribute("src")
    page.locator("#cmap input").click()
    page.get_by_role("option", name="turbo").click()
    page.wait_for_function(f"() => document.querySelector('#rec-human img').src !== {preview!r}")
    page.locator("#run").click()
    wait_for_results(page)
    assert "human map: ClickMe" in page.locator("#summary").inner_text()
    assert "turbo" in page.locator("#colorbar").inner_text()
    colour_scale(page)
    note = page.locator("#score-note").inner_text()
    assert "0.658" in note and "exceed 1" in note
    page.wait_for_selector("#export", state="visible")
    page.wait_for_timeout(500)
    # the README's picture: written into assets/ only when asked (DCLSVIZ_SCREENSHOT=1), so that a test run
    # leaves the working tree as it was
    shot = ASSETS / "screenshot.png" if os.environ.get("DCLSVIZ_SCREENSHOT") == "1" else ARTIFACTS / "screenshot.png"
    save_screenshot(page, shot)
    assert 20_000 < shot.stat().st_size < 900_000


def test_review_session_blind_verdicts_and_reveal(page, browser, app_server):
    page.get_by_role("tab", name="Review").click()
    page.get_by_text("New session").click()
    # the photo upload shows only for photos; the shard's widgets only for records
    page.wait_for_selector("#rv-shard", state="visible")
    assert not page.locator("#rv-files").is_visible()
    page.locator("#rv-kind").get_by_text("Photos I upload").click()
    page.wait_for_selector("#rv-files", state="visible")
    assert not page.locator("#rv-shard").is_visible()
    page.locator("#rv-kind").get_by_text("Records of a shard").click()
    page.wait_for_selector("#rv-files", state="hidden")
    page.locator("#rv-name textarea, #rv-name input").first.fill("browser-review")
    page.locator("#rv-create").click()
    page.wait_for_function("() => /item 1 of 20/.test(document.querySelector('#rv-progress').innerText)")
    # the organiser sees the two secrets once, each with a copy button
    assert page.locator("#rv-org-token textarea, #rv-org-token input").first.input_value().startswith("rvo_")
    invite = page.locator("#rv-invite textarea, #rv-invite input").first.input_value()
    assert invite.startswith("rvi_")
    assert page.locator("#rv-invite button[aria-label*=opy], #rv-invite button[title*=opy]").count() >= 1
    for side in ("A", "B"):  # a session shows the paper's two maps by default, each panel titled by its method
        for k in (1, 2):
            page.wait_for_selector(f"#rv-{side}-{k} img")
    assert page.locator(".map-title").filter(has_text="A: Threshold-Grad-CAM").first.is_visible()
    page.wait_for_selector("#rv-human img")
    # blind: no model name and no score anywhere on the review panel
    panel = page.locator("#rv-progress").inner_text()
    assert "DCLS" not in panel and "ρ" not in panel
    first = page.locator("#rv-A-1 img").get_attribute("src")
    page.locator("#rv-note textarea, #rv-note input").first.fill("A follows the outline")
    page.locator("#rv-A").click()
    page.wait_for_function("() => /item 2 of 20 · 1 judged/.test(document.querySelector('#rv-progress').innerText)")
    assert page.locator("#rv-A-1 img").get_attribute("src") != first
    assert page.locator("#rv-note textarea, #rv-note input").first.input_value() == ""
    page.locator("#rv-tie").click()
    page.wait_for_function("() => /item 3 of 20 · 2 judged/.test(document.querySelector('#rv-progress').innerText)")

    # another browser joins with the invite code and starts at its own first item
    other = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        pg = other.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(app_server.url)
        pg.get_by_role("tab", name="Review").click()
        pg.get_by_text("Join a session").click()
        pg.locator("#rv-code input, #rv-code textarea").first.fill(invite)
        pg.locator("#rv-who input, #rv-who textarea").first.fill("second reviewer")
        pg.locator("#rv-join").click()
        pg.wait_for_function("() => /item 1 of 20 · 0 judged/.test(document.querySelector('#rv-progress').innerText)")
    finally:
        other.close()
    page.locator("#rv-reveal").click()
    page.wait_for_function("() => /2 verdicts/.test(document.querySelector('#rv-reveal-text').innerText)")
    text = page.locator("#rv-reveal-text").inner_text()
    assert "DCLS preferred" in text and "tie 1" in text and "95 % CI" in text  # the organiser's reveal
    page.wait_for_selector("#rv-csv", state="visible")
    # unblinded: this page takes no more verdicts
    for k in ("A", "B", "tie", "neither"):
        assert page.locator(f"#rv-{k}").is_disabled(), k
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshot_review.png"), full_page=True)

    # a reload forgets the page, not the tokens: the browser's storage still holds them
    page.reload()
    page.wait_for_selector("#run")
    page.get_by_role("tab", name="Review").click()
    page.locator("#rv-existing input").click()
    page.get_by_role("option", name="browser-review · reviewer · 2/20 judged").click()
    page.locator("#rv-resume").click()
    page.wait_for_function("() => /item 3 of 20 · 2 judged/.test(document.querySelector('#rv-progress').innerText)")


def test_dataset_tab_table_plot_and_rows(page):
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-n input[type=number]").fill("24")
    page.locator("#ds-n input[type=number]").press("Enter")
    page.locator("#ds-run").click()
    page.wait_for_selector("#ds-plot img")
    page.wait_for_function("() => /first \\*?\\*?24/.test(document.querySelector('#ds-headline').innerText)")
    summary = page.locator("#ds-summary").inner_text()
    assert "Threshold-Grad-CAM" in summary and re.search(r"0\.\d{3}", summary)
    per_method = page.locator("#ds-methods-table").inner_text()
    assert "Wilcoxon" in per_method and re.search(r"[+-]0\.\d{4}", per_method)
    page.wait_for_selector("#ds-robustness img")
    assert page.locator("#ds-rows").inner_text().count("demo_val.tfrecords:") >= 10
    page.wait_for_selector("#ds-download", state="visible")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshot_dataset.png"), full_page=True)

    # a run that fails (the demo shard's labels are no classes of a study pair) says why in a box that stays,
    # and keeps the results
    rows = page.locator("#ds-rows").inner_text()
    page.locator("#ds-arch input").click()
    page.get_by_role("option", name="convnext_tiny").click()
    page.locator("#ds-arch .token", has_text="demo").locator(".token-remove").click()
    page.locator("#ds-arch .token", has_text="demo").wait_for(state="detached")
    page.locator("#ds-run").click()
    status = page.locator("#ds-status")
    status.get_by_text("not classes of convnext_tiny").wait_for()
    assert "previous run" in status.inner_text()
    assert page.locator("#ds-rows").inner_text() == rows
    assert page.locator("#ds-plot img").count() == 1
    assert "Error" not in page.locator("#ds-summary").inner_text()


def test_a_custom_pair_from_a_folder_is_offered_and_compared(browser, tmp_path_factory):
    """DCLSVIZ_PAIRS=dir/ adds the folder's pair files to the model dropdown, and a comparison runs on one: the
    demo pair's weights under another name give the demo pair's numbers, in a real browser."""
    import shutil
    import subprocess
    import sys

    from app_fixtures import REPO, start_server, stop_server

    home = tmp_path_factory.mktemp("custom_pair_home")
    folder = home / "pairs"
    folder.mkdir()
    text = subprocess.run([sys.executable, "-m", "dclsviz", "pair", "export", "demo"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    for v in VARIANTS:
        shutil.copyfile(ASSETS / "demo" / f"demo_{v}.safetensors", folder / f"lab_{v}.safetensors")
        text = re.sub(rf'path = ".*demo_{v}\.safetensors"', f'path = "{folder / f"lab_{v}.safetensors"}"', text)
    (folder / "shapes_lab.toml").write_text(text.replace('arch = "demo"', 'arch = "shapes_lab"'))
    server = start_server(home, env={"DCLSVIZ_PAIRS": str(folder)})
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url)
        page.wait_for_selector("#run")
        rhos = {}
        for arch in ("shapes_lab", "demo"):
            page.locator("#arch input").click()
            page.get_by_role("option", name=arch, exact=True).click()
            page.locator("#run").click()
            page.wait_for_function(f"() => document.querySelector('#col-dcls').innerText.includes('{arch}')")
            wait_for_results(page)
            # the value itself (a progress overlay may still sit on the element as it finishes)
            rhos[arch] = [RHO.findall(page.locator(f"#rho-{v}-{m}").inner_text()) for v in VARIANTS for m in MAPS]
        assert all(len(found) == 1 for found in rhos["shapes_lab"]), rhos
        assert rhos["shapes_lab"] == rhos["demo"]
        # the Dataset and Review tabs' endpoints take the custom pair as well
        from app_fixtures import make_client

        client = make_client(server, home / "downloads")
        summaries = {arch: client.predict(arch, "", 4, "paper", 0.3, api_name="/evaluate")[0]
                     for arch in ("shapes_lab", "demo")}
        assert summaries["shapes_lab"]["models"]["shapes_lab"] == summaries["demo"]["models"]["demo"]
        made = client.predict("lab", "", 0, 2, "shapes_lab", "", api_name="/review_create")
        token = client.predict(made["invite_code"], "me", api_name="/review_join")["reviewer_token"]
        shown, *pictures = client.predict(token, api_name="/review_next")
        assert not shown["finished"] and pictures[2] and pictures[3]
        server.assert_alive()
    finally:
        ctx.close()
        stop_server(server)
