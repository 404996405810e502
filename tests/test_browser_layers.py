"""The Train page's layer picker in a real browser: keep a layer in bf16, launch a tiny fp8
run, and see the layer kept in bf16 on Live and "bf16" in its FP8 health row."""

import pytest
from conftest import wait_for
from test_browser import browser, idle, shot, start_server  # noqa: F401 (fixture)

from fp8demo.store import Store

pytestmark = pytest.mark.e2e  # a real server, browser and training process

# A tiny fp8 run through the URL's settings: 2 steps, a probe at each.
TINY_QUERY = "subset=64&vocab_size=800&seq_len=64&epochs=1&precisions=fp8&probe_every=1"
LAYER = "dense"


def grid_cells(page) -> list[str]:
    """The text of every cell of the page's data grids (Streamlit's canvas grid keeps an
    accessible copy of its cells in the page)."""
    return page.locator('[data-testid="stDataFrame"] [role="gridcell"]').all_inner_texts()


def settled(read, what, timeout=30):
    """What `read()` returns once two reads in a row agree."""
    last = [None]

    def unchanged():
        now = read()
        same, last[0] = now == last[0], now
        return same and now

    return wait_for(unchanged, timeout, what)


def test_a_layer_picked_on_train_trains_in_bf16_and_health_says_so(tmp_path, imdb_folder, browser):  # noqa: F811
    from playwright.sync_api import expect

    home = tmp_path / "home"
    home.mkdir()
    process, url = start_server(home, imdb_folder)
    store = Store(home)
    try:
        # Tall enough that the picker's list opens inside the view: a click on an option
        # below it scrolls the page, and the scroll closes the list before the click lands.
        page = browser.new_context(viewport={"width": 1500, "height": 2000}).new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/?{TINY_QUERY}")
        idle(page)
        expect(page.locator(".st-key-subset input")).to_have_value("64", timeout=30_000)
        page.get_by_text("Advanced", exact=True).click()
        # The expander scrolls while it opens, and the picker's list closes on any scroll
        # outside it (an option clicked in a closing list is not selected): wait until the
        # expander holds still.
        advanced = page.locator('[data-testid="stExpander"] details').filter(has_text="Advanced")
        size = "d => [d.getBoundingClientRect().height, d.scrollTop]"
        settled(lambda: advanced.evaluate(size), "the Advanced expander to open")
        picker = page.locator(".st-key-bf16_layers input")
        picker.click()
        page.keyboard.type(LAYER)  # opens the list, with the layers whose names hold the text
        expect(picker).to_have_attribute("aria-expanded", "true")
        page.get_by_role("option", name=LAYER, exact=True).click(timeout=30_000)
        expect(page.locator(".st-key-bf16_layers [data-tag]")).to_have_text([LAYER])
        page.keyboard.press("Escape")
        idle(page)
        page.wait_for_url(f"**bf16_layers={LAYER}**", timeout=15_000)  # the URL keeps it
        shot(page, "layers-1-train")
        page.get_by_role("button", name="Launch").click()

        page.wait_for_url("**/live**", timeout=30_000)
        main = page.locator('[data-testid="stMain"]')
        expect(main).to_contain_text(f"Kept in bf16 in the float8 runs: {LAYER}.", timeout=30_000)
        (comparison,) = store.comparisons()
        (run,) = comparison["runs"]
        assert run["config"].bf16_layers == (LAYER,)
        wait_for(lambda: len(store.fp8_probe(run["id"])[0]), 300, "the fp8 run's first probe")

        page.goto(f"{url}/health?comparison={comparison['id']}")
        idle(page)
        expect(main).to_contain_text(f"kept in bf16: {LAYER}", timeout=30_000)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
        top = wait_for(lambda: grid_cells(page), 30, "the health table's cells")
        assert top[:3] == ["decoder/self_attention/query", "inputs", "E4M3"], top[:3]
        # The grid draws the rows in view: scroll it to its end, where dense is.
        page.locator('[data-testid="stDataFrame"]').first.hover()
        page.mouse.wheel(0, 3000)
        cells = wait_for(lambda: LAYER in grid_cells(page) and grid_cells(page), 30, LAYER)
        row = cells.index(LAYER)  # the dense layer's one row: layer, role, format
        assert cells[row + 1 : row + 3] == ["all", "bf16"], cells[row : row + 4]
        shot(page, "layers-2-health")
        assert not page.locator('[data-testid="stException"]').count()
        assert not errors, errors
        page.context.close()
    finally:
        for queued in store.queue():
            store.request_cancel(queued["id"])
        process.terminate()
        process.wait(20)
