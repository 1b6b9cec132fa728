"""The console in a real browser against a real `headhub up`, as its users go through it.

The tests run in file order and share one stack and one browser (tests/console/conftest.py):
the operator creates two tenants; acme's owner builds a dataset from a dropped zip and dropped
loose files, trains, watches the job reach 100%, sets an alias, publishes (with markup in the
description) and exports; globex finds the head in the marketplace and tries it on images; the
operator suspends it and everyone sees it refused; a predict key sees no dataset page; a revoked
key returns to sign-in; acme tries two heads at once and watches a running job's curve grow.
Screenshots of the main pages go to tests/console/screenshots/.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from playwright.sync_api import Page, expect

from tests.console.conftest import Persona, Stack, screenshot
from tests.console.images import colour_png, colours_zip

pytestmark = pytest.mark.slow

XSS = "<img src=x onerror=alert(1)>"
BAD_FILENAME = "<img src=y onerror=alert(2)>.png"
PER_LABEL = 8
OWNER_NAV = ["Datasets", "Training", "Heads", "Try it", "Marketplace", "Keys", "Usage"]


@dataclass
class World:
    """What one step leaves for the next."""

    acme_owner: str = ""
    globex_owner: str = ""
    acme_predict: str = ""
    dataset_id: str = ""
    job_id: str = ""


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def h1(page: Page) -> Any:
    return page.locator("main h1")


def nav(page: Page) -> list[str]:
    return page.locator("#nav a").all_inner_texts()


def sign_in(persona: Persona, stack: Stack, key: str) -> Page:
    page = persona.page
    page.goto(stack.console)
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page


def go(page: Page, link: str) -> None:
    page.locator("#nav").get_by_role("link", name=link, exact=True).click()
    expect(page.locator("#nav a[aria-current=page]")).to_have_text(link)


def need(value: str, step: str) -> str:
    if not value:
        pytest.fail(f"this step needs the earlier step '{step}' (run the module as a whole)")
    return value


def drop_files(page: Page, *files: tuple[str, bytes, str]) -> None:
    """Drag files (name, bytes, MIME type) over the page's drop zone and drop them, as a browser
    does: dragenter and dragover (the zone lights up), then drop, with one DataTransfer holding
    the files (built in the page)."""
    transfer = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const [name, b64, mime] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], name, { type: mime }));
            }
            return dt;
        }""",
        [[name, base64.b64encode(data).decode(), mime] for name, data, mime in files],
    )
    zone = page.locator(".drop-zone")
    for event in ("dragenter", "dragover"):
        zone.dispatch_event(event, {"dataTransfer": transfer})
    expect(zone).to_have_class(re.compile(r"\bover\b"))
    zone.dispatch_event("drop", {"dataTransfer": transfer})
    expect(zone).not_to_have_class(re.compile(r"\bover\b"))


def paste_file(page: Page, name: str, data: bytes) -> None:
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/png" }));
            const paste = new ClipboardEvent("paste", { clipboardData: dt, bubbles: true });
            document.dispatchEvent(paste);
        }""",
        [name, base64.b64encode(data).decode()],
    )


def fact(card: Any, term: str) -> Any:
    """The value (dd) that follows the term (dt) `term` in a card's facts."""
    return card.locator(f"xpath=.//dl/dt[normalize-space()='{term}']/following-sibling::dd[1]")


def top_labels(page: Page) -> list[str]:
    """The first (highest) bar's label of each result card, in order."""
    first = page.locator(".result .bars.predictions .bar-row:first-child .bar-label")
    return first.all_inner_texts()


# -- operator -----------------------------------------------------------------------------------


def test_operator_signs_in_and_creates_two_tenants_with_owner_keys(
    stack: Stack, personas: dict[str, Persona], world: World
) -> None:
    admin = personas["admin"]
    page = admin.page
    response = page.goto(stack.console)
    assert response is not None and response.ok
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    expect(h1(page)).to_have_text("Sign in")

    page.get_by_label("API key").fill("hh_0000_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

    page.get_by_label("API key").fill(stack.admin_key)
    page.get_by_label("API key").press("Enter")
    expect(h1(page)).to_have_text("Tenants")
    assert stack.admin_key not in page.url
    assert page.context.cookies() == []
    assert nav(page)[:5] == ["Try it", "Marketplace", "Tenants", "All heads", "All jobs"]

    for name in ("acme", "globex"):
        page.get_by_label("Tenant name").fill(name)
        page.get_by_role("button", name="Create tenant").click()
        key_box = page.locator("#new-key-value")
        expect(key_box).to_have_value(re.compile(r"^hh_"))
        key = key_box.input_value()
        page.get_by_role("button", name="Copy").click()
        expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == key
        page.get_by_role("button", name="I have stored it").click()
        expect(key_box).to_have_count(0)  # shown once
        setattr(world, f"{name}_owner", key)
    expect(page.locator("table").get_by_text("globex", exact=True)).to_be_visible()
    screenshot(page, "operator-tenants")


# -- acme's owner: dataset, upload, training -------------------------------------------------


def test_owner_creates_a_dataset_and_drops_a_zip_with_a_progress_bar(
    stack: Stack, personas: dict[str, Persona], world: World
) -> None:
    page = sign_in(personas["acme"], stack, need(world.acme_owner, "operator"))
    expect(h1(page)).to_have_text("Datasets")
    assert nav(page) == OWNER_NAV

    page.get_by_label("Dataset name").fill("colours")
    page.get_by_label("Description (optional)").fill("solid colours with noise")
    page.get_by_role("button", name="Create dataset").click()
    expect(h1(page)).to_have_text("Dataset colours")
    world.dataset_id = page.url.split("#/datasets/", 1)[1]

    drop_files(page, ("colours.zip", colours_zip(PER_LABEL), "application/zip"))
    expect(page.locator(".upload-summary")).to_have_text("Added 24, duplicates 0, rejected 0.")
    expect(page.locator(".progress-text").first).to_contain_text("100%")
    assert page.locator("progress").first.evaluate("p => p.value") == 100
    labels = page.locator(".card .bars").first
    expect(labels.locator(".bar-label")).to_have_text(["blue", "green", "red"])
    expect(labels.locator(".bar-value")).to_have_text([str(PER_LABEL)] * 3)
    expect(page.locator(".gallery img.thumb")).to_have_count(24)  # previews read from the zip
    expect(page.locator(".paged img.thumb")).to_have_count(24)  # from the API


def test_loose_files_take_the_typed_label_and_a_bad_file_is_listed_with_its_reason(
    personas: dict[str, Persona],
) -> None:
    acme = personas["acme"]
    page = acme.page
    files = [
        ("red-extra.png", colour_png("red", 99), "image/png"),
        (BAD_FILENAME, b"this is not an image", "image/png"),
    ]
    page.locator(".drop-zone input[type=file]").set_input_files(
        [{"name": name, "buffer": data, "mimeType": mime} for name, data, mime in files]
    )  # picked without a label: refused before anything is sent
    expect(page.get_by_role("alert").filter(has_text="Type the label")).to_be_visible()

    page.get_by_label("Label for loose images").fill("red")
    uploads = len([r for r in acme.requests if re.match(r"POST .*/images(\?|$)", r)])
    drop_files(page, *files)  # the same files dragged and dropped onto the zone this time
    expect(page.locator(".upload-summary")).to_have_text("Added 1, duplicates 0, rejected 1.")
    assert len([r for r in acme.requests if re.match(r"POST .*/images(\?|$)", r)]) > uploads
    rejected = page.get_by_role("region", name="Rejected files")
    expect(rejected.locator("tbody tr")).to_have_count(1)
    expect(rejected.locator("tbody td").first).to_have_text(BAD_FILENAME)  # as text
    assert rejected.locator("tbody td").nth(1).inner_text().strip()  # the server's reason
    expect(page.locator("img[src='y']")).to_have_count(0)
    expect(page.locator(".card .bars").first.locator(".bar-value")).to_have_text(["8", "8", "9"])
    expect(page.locator(".gallery .thumb.broken")).to_have_count(1)  # undecodable: no preview
    expect(page.locator(".paged tbody tr")).to_have_count(25)
    screenshot(page, "dataset")


def test_a_fresh_tab_signed_in_again_sees_thumbnails_of_the_stored_images(
    stack: Stack, personas: dict[str, Persona], world: World
) -> None:
    """Thumbnails come from the API, not from what a tab uploaded: a new browser context (its
    own sessionStorage, nothing uploaded from it) shows every listed image's preview."""
    again = personas["acme-again"]
    page = sign_in(again, stack, need(world.acme_owner, "operator"))
    page.goto(f"{stack.console}#/datasets/{need(world.dataset_id, 'dataset')}")
    page.reload()  # and a reload of that tab: the key is still in its sessionStorage
    expect(h1(page)).to_have_text("Dataset colours")
    thumbs = page.locator(".paged img.thumb")
    expect(thumbs).to_have_count(25)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.paged img.thumb')]"
        ".every((img) => img.complete && img.naturalWidth > 0)"
    )
    sources = thumbs.evaluate_all("imgs => imgs.map((img) => img.src)")
    assert all(src.startswith("blob:") for src in sources)  # fetched with the key in a header
    calls = [r for r in again.requests if "/thumbnail" in r]
    assert len(calls) >= 25 and not [r for r in calls if world.acme_owner in r]
    # Leaving the page revokes the object URLs: one no longer loads (img-src allows blob:).
    load = """(src) => new Promise((done) => {
        const img = new Image();
        img.onload = () => done(true);
        img.onerror = () => done(false);
        img.src = src;
    })"""
    assert page.evaluate(load, sources[0])
    go(page, "Datasets")
    expect(h1(page)).to_have_text("Datasets")
    assert not page.evaluate(load, sources[0])


def test_owner_trains_a_head_and_watches_the_job_reach_100_percent(
    personas: dict[str, Persona], world: World
) -> None:
    page = personas["acme"].page
    page.get_by_role("link", name="Train a head on this dataset").click()
    expect(h1(page)).to_have_text("Training")
    expect(page.get_by_label("Dataset")).to_have_value(need(world.dataset_id, "dataset"))
    page.get_by_label("Head name").fill("colours")
    page.get_by_label("Head type").select_option("float")
    page.get_by_role("button", name="Start training").click()
    expect(h1(page)).to_have_text("Training colours (float)")
    world.job_id = page.url.split("#/jobs/", 1)[1]
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const box = document.querySelector(".job-progress");
            new MutationObserver(() => {
                const p = box.querySelector("progress");
                if (p) window.progressSeen.push(Number(p.value));
            }).observe(box, { childList: true, subtree: true });
        }"""
    )
    expect(page.locator(".job-progress .progress-text")).to_have_text("100%", timeout=180_000)
    expect(page.locator(".facts .badge")).to_have_text("succeeded")
    seen = page.evaluate("window.progressSeen")
    assert seen and seen[-1] == 100 and seen == sorted(seen), seen
    curve = page.locator("svg.chart polyline.series").first  # the validation curve
    expect(curve).to_have_attribute("points", re.compile(r"^[\d.]+,[\d.]+( [\d.]+,[\d.]+)+$"))
    expect(page.get_by_role("link", name="acme/colours:1")).to_be_visible()
    screenshot(page, "job")


# -- the head: metrics, alias, publish, export ----------------------------------------------


def test_head_page_shows_metrics_sets_an_alias_publishes_and_exports(
    personas: dict[str, Persona], tmp_path: Path
) -> None:
    page = personas["acme"].page
    page.get_by_role("link", name="acme/colours:1").click()
    expect(h1(page)).to_have_text("acme/colours")
    expect(page.locator("#version-picker option")).to_have_count(1)
    cells = page.locator("table.heatmap td.heat")
    expect(cells).to_have_count(9)  # 3 labels: a 3x3 confusion matrix
    counts = [int(c) for c in cells.all_inner_texts()]
    assert sum(counts) >= 3
    per_class = page.get_by_role("region", name=re.compile("^Per-class precision and recall"))
    expect(per_class.locator("tbody tr")).to_have_count(3)

    page.get_by_label("Alias", exact=True).fill("production")
    page.get_by_role("button", name="Set alias").click()
    expect(page.locator(".alias-list")).to_contain_text("production → v1")

    page.get_by_role("button", name="Delete this version").click()
    again = page.get_by_role("button", name="Click again to delete the version")  # no dialog
    again.click()
    expect(page.get_by_role("alert")).to_contain_text("move the alias first")  # the 409, as text
    expect(page.locator("#version-picker option")).to_have_count(1)

    page.get_by_label("Visibility").select_option("public")
    page.get_by_label("Description").fill(XSS)
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".badges")).to_contain_text("public")
    expect(page.locator("p.description")).to_have_text(XSS)  # literally, as text
    expect(page.locator("img[src='x']")).to_have_count(0)

    page.get_by_label("Format").select_option("onnx")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    download = info.value
    assert download.suggested_filename == "acme-colours-v1.onnx"
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    model = onnx.load(str(target))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert "red" in json.dumps(metadata), metadata  # the labels travel in the file
    expect(page.get_by_text("Saved acme-colours-v1.onnx")).to_be_visible()
    screenshot(page, "head")


# -- globex: marketplace and try-it ------------------------------------------------------------


def test_another_tenant_finds_the_head_in_the_marketplace_and_tries_it(
    stack: Stack, personas: dict[str, Persona], world: World
) -> None:
    globex = personas["globex"]
    page = sign_in(globex, stack, need(world.globex_owner, "operator"))
    go(page, "Marketplace")
    page.get_by_label("Text (owner, name or description)").fill("colours")
    page.get_by_role("button", name="Search").click()
    card = page.locator("article.market-card").filter(has_text="acme/colours")
    expect(card).to_have_count(1)
    expect(card.locator(".description")).to_have_text(XSS)
    expect(card.locator(".chip")).to_have_text(["blue", "green", "red"])
    expect(page.locator("img[src='x']")).to_have_count(0)
    # Its metrics: the best version's validation top-1, as the API reports it; its usage: none yet.
    with stack.api(world.globex_owner) as api:
        listed = api.get("/v1/marketplace", params={"q": "colours"}).json()["items"]
    (item,) = [i for i in listed if i["ref"] == "acme/colours"]
    top1 = item["best_metrics"]["val_top1"]
    expect(fact(card, "Best top-1")).to_have_text(f"{top1 * 100:.1f}% (v1)")
    expect(fact(card, "Used on")).to_have_text("0 images")

    page.get_by_label("Text (owner, name or description)").fill("")
    page.get_by_label("Label", exact=True).fill("purple")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No public head matches.")).to_be_visible()
    page.get_by_label("Label", exact=True).fill("green")
    page.get_by_role("button", name="Search").click()
    expect(card).to_have_count(1)
    screenshot(page, "marketplace")

    card.get_by_role("link", name="Try acme/colours").click()
    expect(h1(page)).to_have_text("Try it")
    expect(page.get_by_label("Other heads")).to_have_value("acme/colours")
    page.locator(".drop-zone input[type=file]").set_input_files(
        [{"name": "a-red-one.png", "mimeType": "image/png", "buffer": colour_png("red", 5000)}]
    )
    paste_file(page, "pasted-green.png", colour_png("green", 5001))
    expect(page.locator(".gallery .tile")).to_have_count(2)
    page.get_by_role("button", name="Predict").click()
    expect(page.locator(".result")).to_have_count(2)
    expect(page.locator(".result h4").first).to_have_text("acme/colours:1")
    assert top_labels(page) == ["red", "green"]
    screenshot(page, "try-it")


# -- operator: suspension ----------------------------------------------------------------------


def test_operator_suspends_the_head_and_every_tenant_sees_it_refused(
    stack: Stack, personas: dict[str, Persona]
) -> None:
    admin = personas["admin"].page
    go(admin, "All heads")
    row = admin.locator("tr").filter(has_text="acme/colours")
    row.get_by_role("button", name="Suspend acme/colours").click()
    expect(row.locator(".badge").filter(has_text="suspended")).to_be_visible()
    screenshot(admin, "operator-heads")

    globex = personas["globex"].page
    globex.get_by_role("button", name="Predict").click()
    expect(globex.get_by_role("alert")).to_contain_text("suspended")
    expect(globex.locator(".result")).to_have_count(0)

    acme = personas["acme"].page
    acme.reload()
    expect(acme.locator(".badges")).to_contain_text("suspended")
    with acme.expect_response(lambda r: "/export" in r.url) as refused:
        acme.get_by_role("button", name="Download").click()
    assert refused.value.status == 403
    expect(acme.get_by_role("alert")).to_contain_text("suspended")

    go(admin, "Tenants")  # the operator reaches a tenant's keys from its row
    admin.get_by_role("link", name="keys of acme").click()
    expect(h1(admin)).to_have_text("Keys of acme")
    expect(admin.locator("tbody tr").filter(has_text="owner")).to_have_count(1)
    go(admin, "All heads")

    row.get_by_role("button", name="Unsuspend acme/colours").click()
    expect(row.get_by_role("button", name="Suspend acme/colours")).to_be_visible()
    globex.get_by_role("button", name="Predict").click()
    expect(globex.locator(".result")).to_have_count(2)


# -- keys and scopes --------------------------------------------------------------------------


def test_a_predict_key_is_shown_once_signs_in_by_keyboard_and_sees_no_dataset_page(
    stack: Stack, personas: dict[str, Persona], world: World
) -> None:
    acme = personas["acme"].page
    go(acme, "Keys")
    acme.get_by_label("Key name").fill("field-app")
    acme.get_by_label("Scope").select_option("predict")
    acme.get_by_role("button", name="Create key").click()
    world.acme_predict = acme.locator("#new-key-value").input_value()
    assert world.acme_predict.startswith("hh_")
    acme.get_by_role("button", name="I have stored it").click()
    expect(acme.locator("tr").filter(has_text="field-app")).to_contain_text("active")

    predict = personas["predict"]
    page = predict.page
    page.goto(stack.console)
    expect(page.get_by_label("API key")).to_be_focused()  # keyboard only from here
    page.keyboard.type(world.acme_predict)
    page.keyboard.press("Enter")
    expect(h1(page)).to_have_text("Try it")
    assert nav(page) == ["Heads", "Try it", "Marketplace"]
    for _ in range(10):  # back from the page's heading to the last link of the main navigation
        if page.evaluate("document.activeElement.textContent") == "Marketplace":
            break
        page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(h1(page)).to_have_text("Marketplace")

    page.goto(f"{stack.console}#/datasets")
    expect(h1(page)).to_have_text("Not available with this key")
    page.goto(f"{stack.console}#/training")
    expect(h1(page)).to_have_text("Not available with this key")
    assert not [r for r in predict.requests if "/v1/datasets" in r or "/v1/jobs" in r]

    go(page, "Try it")
    page.get_by_label("acme/colours", exact=True).check()
    page.locator(".drop-zone input[type=file]").set_input_files(
        [{"name": "blue.png", "mimeType": "image/png", "buffer": colour_png("blue", 7000)}]
    )
    page.get_by_role("button", name="Predict").click()
    expect(page.locator(".result")).to_have_count(1)
    assert top_labels(page) == ["blue"]


def test_a_revoked_key_returns_to_sign_in(personas: dict[str, Persona]) -> None:
    acme = personas["acme"].page
    revoke = acme.get_by_role("button", name="Revoke key field-app")
    revoke.click()
    revoke.click()  # the second click confirms (no window.confirm dialog)
    expect(acme.locator("tr").filter(has_text="field-app")).to_contain_text("revoked")

    page = personas["predict"].page
    page.get_by_role("button", name="Predict").click()
    expect(h1(page)).to_have_text("Sign in")
    expect(page.get_by_role("status").filter(has_text="not accepted")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_owner_tries_two_of_its_heads_at_once_and_sees_bars_from_each(
    personas: dict[str, Persona],
) -> None:
    page = personas["acme"].page
    go(page, "Training")  # a second head on the same dataset (its features are already stored)
    page.get_by_label("Head name").fill("colours-mlp")
    page.get_by_label("Head type").select_option("mlp")
    page.get_by_role("button", name="Start training").click()
    expect(h1(page)).to_have_text("Training colours-mlp (mlp)")
    expect(page.locator(".facts .badge")).to_have_text("succeeded", timeout=180_000)

    go(page, "Try it")
    for head in ("acme/colours", "acme/colours-mlp"):
        page.get_by_label(head, exact=True).check()
    page.locator(".drop-zone input[type=file]").set_input_files(
        [{"name": "red.png", "mimeType": "image/png", "buffer": colour_png("red", 8000)}]
    )
    page.get_by_role("button", name="Predict").click()
    result = page.locator(".result")
    expect(result).to_have_count(1)  # one image
    blocks = result.locator(".prediction")
    expect(blocks.locator("h4")).to_have_text(["acme/colours:1", "acme/colours-mlp:1"])
    for block in blocks.all():  # one block per head, each with its top-3 as bars
        expect(block.locator(".bars.predictions .bar-row")).to_have_count(3)
    assert top_labels(page) == ["red", "red"]


# -- jobs: cancel, the operator's view -------------------------------------------------------


def test_owner_cancels_a_running_job(personas: dict[str, Persona]) -> None:
    page = personas["acme"].page
    go(page, "Training")
    page.get_by_label("Head name").fill("colours-binary")
    page.get_by_label("Head type").select_option("binary")
    # Long enough to be caught running on any machine: 5,000 epochs of one-example steps.
    page.get_by_label("Trainer parameters").fill('{"epochs": 5000, "patience": 0, "batch_size": 1}')
    page.get_by_role("button", name="Start training").click()
    expect(page.locator(".facts .badge")).to_have_text("running", timeout=60_000)
    # The validation curve grows while the job runs, not only once it is done: one page state
    # with the status still "running", progress under 100% and a curve of several epochs.
    page.wait_for_function(
        """() => {
            const status = document.querySelector(".facts .badge")?.textContent;
            const pct = document.querySelector(".job-progress progress")?.value;
            const curve = document.querySelector("svg.chart polyline.series.s1");
            const points = curve?.getAttribute("points").trim().split(/\\s+/) || [];
            return status === "running" && pct < 100 && points.length >= 2;
        }""",
        timeout=60_000,
    )
    expect(page.locator("figure.chart-box figcaption").first).to_have_text(
        "Validation accuracy (top-1) by epoch"
    )
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".facts .badge")).to_have_text("cancelled", timeout=60_000)
    expect(page.get_by_role("link", name=re.compile("colours-binary:"))).to_have_count(0)


def test_operator_sees_every_job_with_its_status(personas: dict[str, Persona]) -> None:
    page = personas["admin"].page
    go(page, "All jobs")
    table = page.get_by_role("region", name="Every job, newest first")
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator(".badge")).to_have_text(["cancelled", "succeeded", "succeeded"])
    page.get_by_label("Status").select_option("cancelled")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("colours-binary")
    page.get_by_label("Status").select_option("")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(3)
    screenshot(page, "operator-jobs")


def test_extractors_section_is_shown_only_when_the_api_has_one(
    stack: Stack, personas: dict[str, Persona]
) -> None:
    r = httpx.get(
        f"{stack.url}/v1/extractors", headers={"Authorization": f"Bearer {stack.admin_key}"}
    )
    page = personas["admin"].page
    if r.status_code == 404:
        assert "Extractors" not in nav(page)
    else:
        assert r.status_code == 200, r.text
        go(page, "Extractors")
        listed = page.get_by_role("region", name="Extractors")
        expect(listed.locator("tbody tr")).to_have_count(len(r.json()["items"]))
        expect(listed.locator("tbody tr").first).to_contain_text("active")
        screenshot(page, "operator-extractors")


def test_usage_counts_the_images_others_scored_with_a_public_head(
    personas: dict[str, Persona],
) -> None:
    page = personas["acme"].page
    go(page, "Usage")
    bar = page.locator(".bars .bar-row").filter(has_text="acme/colours")
    expect(bar).to_have_count(1)
    scored = int(bar.locator(".bar-value").inner_text())
    assert scored >= 4  # globex scored 2 images twice

    # The marketplace card shows the same count, and it rises when another tenant predicts.
    go(page, "Marketplace")
    used = fact(page.locator("article.market-card").filter(has_text="acme/colours"), "Used on")
    expect(used).to_have_text(f"{scored} images")
    globex = personas["globex"].page  # still on Try it with its two images and acme/colours
    with globex.expect_response(lambda r: "/v1/predict" in r.url) as predicted:
        globex.get_by_role("button", name="Predict").click()
    assert predicted.value.ok
    expect(globex.locator(".result")).to_have_count(2)
    page.get_by_role("button", name="Search").click()
    expect(used).to_have_text(f"{scored + 2} images")


# -- every page: readable at 360 px, labelled controls ------------------------------------------

# Form controls and buttons on the page that have no accessible name.
UNLABELLED = """() => [...document.querySelectorAll(
        "main input, main select, main textarea, main button, header button")]
    .filter((el) => (el.type !== "hidden" && el.offsetParent !== null) || el.type === "file")
    .filter((el) => {
        const named = el.labels?.length || el.getAttribute("aria-label")
            || el.getAttribute("aria-labelledby");
        return !(named || (el.tagName === "BUTTON" && el.textContent.trim()));
    })
    .map((el) => el.outerHTML.slice(0, 80))"""


MOBILE = {"width": 360, "height": 780}


def test_pages_fit_360_px_and_every_control_has_a_label(
    stack: Stack, personas: dict[str, Persona], world: World
) -> None:
    # page -> (route, what shows once its data is drawn)
    owner_pages = {
        "datasets": ("#/datasets", "main table"),
        "dataset": (f"#/datasets/{need(world.dataset_id, 'dataset')}", ".paged tbody tr"),
        "training": ("#/training", "main table"),
        "job": (f"#/jobs/{need(world.job_id, 'training')}", "svg.chart"),
        "heads": ("#/heads", "main table"),
        "head": ("#/heads/acme/colours", "table.heatmap"),
        "try": ("#/try?heads=acme/colours", "fieldset .check"),
        "marketplace": ("#/marketplace", "article.market-card"),
        "keys": ("#/keys", "main table"),
        "usage": ("#/usage", "main .bars"),
    }
    operator_pages = {
        "tenants": ("#/admin/tenants", "main table"),
        "all heads": ("#/admin/heads", "main table"),
        "all jobs": ("#/admin/jobs", "main table"),
        "operator's job": (f"#/jobs/{world.job_id}", "svg.chart"),
    }

    def visit(p: Page, route: str, drawn: str) -> None:
        p.goto("about:blank")  # a full load each time, so "networkidle" means this page's calls
        p.goto(f"{stack.console}{route}")
        expect(p.locator(drawn).first).to_be_visible()
        p.wait_for_load_state("networkidle")
        expect(p.locator("main .error:visible")).to_have_count(0)

    def check(p: Page, name: str) -> None:
        width = p.evaluate("document.documentElement.scrollWidth")
        assert width <= MOBILE["width"], f"{name} is {width} px wide at a 360 px viewport"
        assert p.evaluate(UNLABELLED) == [], name

    visitor = personas["visitor"].page  # nobody signed in: the sign-in page
    visitor.set_viewport_size(MOBILE)
    visitor.goto(stack.console)
    expect(h1(visitor)).to_have_text("Sign in")
    check(visitor, "sign-in")
    for persona, pages in (("acme", owner_pages), ("admin", operator_pages)):
        page = personas[persona].page
        page.set_viewport_size(MOBILE)
        try:
            for name, (route, drawn) in pages.items():
                visit(page, route, drawn)
                check(page, name)
                if name == "head":
                    screenshot(page, "mobile-head")
        finally:
            page.set_viewport_size({"width": 1280, "height": 900})


def test_no_page_opened_a_dialog_threw_or_broke_the_content_security_policy(
    personas: dict[str, Persona],
) -> None:
    assert set(personas) >= {"admin", "acme", "globex", "predict"}
    for persona in personas.values():
        assert persona.dialogs == [], persona.name
        assert persona.page_errors == [], persona.name
        assert persona.csp_violations == [], persona.name
