"""In a real browser: FP8 health's what-if heatmap shows one chosen GEMM's two operands, each
as that GEMM quantizes it, with the hover's three numbers (issue 22, part 3); its Block scales
view draws a tensor's block scales in that GEMM and names the worst blocks (part 4)."""

import pytest
from conftest import copy_home
from test_browser import (  # noqa: F401  (the browser fixture)
    RECIPE_HEATMAP,
    browser,
    idle,
    shot,
    shows,
    start_server,
    wait_for_recipe_heatmap,
)

pytestmark = pytest.mark.e2e  # a real server, browser and a trained run

# The recipe heatmap's title and row labels, once it names `gemm` (recipe_heatmap's title).
HEATMAP_ROWS = """(gemm) => {
    const el = Array.from(document.querySelectorAll('.js-plotly-plot')).find(el =>
        ((el.layout || {}).title || {}).text?.includes(`in the ${gemm} GEMM`)
        && el.querySelector('.heatmaplayer image'));
    return el ? Array.from(el.data[0].y) : null; }"""

# The block-scale histogram of one recipe: its title and its bars' block counts.
BLOCK_BARS = """(recipe) => {
    const el = Array.from(document.querySelectorAll('.js-plotly-plot')).find(el => {
        const title = ((el.layout || {}).title || {}).text || '';
        return title.includes('Block scales of ') && title.includes(` under ${recipe} `)
            && el.querySelector('.barlayer .point'); });
    return el ? {title: el.layout.title.text, counts: Array.from(el.data[0].y)} : null; }"""


def test_health_shows_the_recipe_heatmap_of_a_chosen_gemm(
    trained,
    tmp_path,
    imdb_folder,
    browser,  # noqa: F811
):
    from playwright.sync_api import expect

    home = tmp_path / "home"
    copy_home(trained["home"], home)
    process, url = start_server(home, imdb_folder)
    try:
        page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/health")
        idle(page)
        wait_for_recipe_heatmap(page)
        page.locator(".st-key-recipe_gemm").get_by_text("wgrad", exact=True).click()
        rows = page.wait_for_function(HEATMAP_ROWS, arg="wgrad", timeout=30_000).json_value()
        # wgrad multiplies each layer's inputs and output gradients; the kernel is not in it.
        assert rows and len(rows) == 16, rows
        assert {row.split(" · ")[1] for row in rows} == {"inputs", "output gradient"}
        chart = page.locator(".js-plotly-plot").filter(has=page.locator(f"text={RECIPE_HEATMAP}"))
        # Until the rerun the click started ends, the chart drawn before it is still in the
        # page (stale) beside the new one.
        idle(page)
        expect(chart).to_have_count(1, timeout=30_000)
        chart.scroll_into_view_if_needed()
        box = chart.locator(".nsewdrag").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.3)
        hover = chart.locator(".hoverlayer .hovertext")
        hover.wait_for(timeout=10_000)
        text = hover.text_content()
        assert "in wgrad" in text and "underflow" in text and "saturation" in text, text
        assert "SNR" in text and not page.locator('[data-testid="stException"]').count()

        # Block scales (the fixture measures them): the first tensor, its inputs, in the GEMM
        # chosen above, under the first block recipe; then under nvfp4, picked as a user does.
        page.get_by_text("Block scales", exact=True).scroll_into_view_if_needed()
        bars = page.wait_for_function(BLOCK_BARS, arg="block128", timeout=30_000).json_value()
        assert " · inputs under block128 (probe at step" in bars["title"], bars
        assert sum(bars["counts"]) > 0 and min(bars["counts"]) >= 0, bars
        shows(page, [" · inputs in wgrad", "At the limit, for block128"])
        shot(page, "health-block-scales")
        page.locator(".st-key-block_recipe").click()
        page.get_by_role("option", name="nvfp4", exact=True).click()
        bars = page.wait_for_function(BLOCK_BARS, arg="nvfp4", timeout=30_000).json_value()
        assert sum(bars["counts"]) > 0, bars
        shows(page, ["At the limit, for nvfp4", "Worst blocks of"])
        assert not page.locator('[data-testid="stException"]').count()
        assert not errors, errors
        page.context.close()
    finally:
        process.terminate()
        process.wait(20)
