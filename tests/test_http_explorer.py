"""The latent-space explorer in a real headless browser (Debian's chromium and chromedriver, driven
by selenium) against a real server: the page loads offline, samples show, sliders re-decode the
picture, interpolation, the 2-D manifold and an uploaded image work, and the console stays clean."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from server.fronts.http.explorer import STATIC
from tests.conftest import free_port, tiny_train_config
from tests.server_helpers import running_server, settings
from tests.system_tools import require_tool

TIMEOUT = 30


def test_the_explorer_loads_nothing_from_outside_the_server():
    """No CDN: every URL in the page, script and style is a path on this server."""
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9]", text, re.IGNORECASE), path.name


@pytest.fixture(scope="module")
def flat_repository(tmp_path_factory, mnist_dir) -> Path:
    """One tiny VAE with a 2-D latent space, for the manifold."""
    from export.pipeline import export_checkpoint
    from training.train import train

    run = tmp_path_factory.mktemp("flat") / "tiny-flat"
    config = tiny_train_config(run, mnist_dir)
    train(dataclasses.replace(config, model=dataclasses.replace(config.model, latent_dim=2)))
    repository = tmp_path_factory.mktemp("flat-repository")
    assert export_checkpoint(run / "best.pt", repository).status == "exported"
    return repository


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = require_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = require_tool("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1400")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT).until(lambda d: condition(d), message=what)


def severe_console_entries(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(driver, base: str, model: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(base + "/")
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), "ready")
    if Select(driver.find_element(By.ID, "model")).first_selected_option.text != model:
        Select(driver.find_element(By.ID, "model")).select_by_visible_text(model)
    wait(
        driver,
        lambda d: (
            model in d.find_element(By.ID, "model").get_attribute("value")
            and len(d.find_elements(By.CSS_SELECTOR, "#grid img")) == 16
        ),
        "16 samples of the chosen model",
    )


def move_slider(driver, dim: int, value: float) -> None:
    driver.execute_script(
        "const s = document.querySelector(`#sliders input[data-dim='${arguments[0]}']`);"
        "s.value = String(arguments[1]); s.dispatchEvent(new Event('input'));",
        dim,
        value,
    )


def test_samples_sliders_interpolation_and_upload_in_a_real_browser(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    base = f"http://127.0.0.1:{live_server.server.http_port}"
    open_page(driver, base, "tiny-vae")
    grid = driver.find_elements(By.CSS_SELECTOR, "#grid img")
    assert all(image.get_attribute("naturalWidth") == "28" for image in grid)

    grid[0].click()
    sliders = driver.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")
    assert len(sliders) == 8  # one per latent dimension
    opened = driver.find_element(By.ID, "opened-image")
    sampled = opened.get_attribute("src")
    for step, value in enumerate((3.5, -3.5, 2.0), start=1):
        move_slider(driver, step - 1, value)
        wait(
            driver, lambda d, n=step: int(opened.get_attribute("data-decodes") or 0) >= n, "decode"
        )
    assert opened.get_attribute("src") != sampled, "the sliders did not change the picture"

    driver.find_element(By.ID, "set-a").click()
    grid[1].click()
    driver.find_element(By.ID, "set-b").click()
    driver.find_element(By.ID, "interpolate-button").click()
    strip = driver.find_element(By.ID, "strip")
    wait(driver, lambda d: strip.get_attribute("naturalWidth") not in (None, "0"), "the strip")
    assert int(strip.get_attribute("naturalWidth")) == 10 * 30 + 2  # 10 steps of 28 + padding

    upload = tmp_path / "digit.png"
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(upload)
    driver.find_element(By.ID, "upload").send_keys(str(upload))
    reconstruction = driver.find_element(By.ID, "reconstruction")
    wait(driver, lambda d: reconstruction.get_attribute("naturalWidth") == "28", "reconstruction")

    assert driver.find_element(By.ID, "status").text == ""
    assert severe_console_entries(driver) == []
    screenshot = driver.get_screenshot_as_png()
    assert Image.open(io.BytesIO(screenshot)).size[0] > 0


def test_the_manifold_of_a_two_dimensional_model(browser, flat_repository):
    from selenium.webdriver.common.by import By

    config = settings(flat_repository, http_port=free_port())
    with running_server(config) as server:
        base = f"http://127.0.0.1:{server.http_port}"
        png = requests.get(f"{base}/v1/models/tiny-flat/manifold?side=5", timeout=30)
        assert Image.open(io.BytesIO(png.content)).size == (5 * 30 + 2, 5 * 30 + 2)
        open_page(browser, base, "tiny-flat")
        assert browser.find_element(By.ID, "manifold-section").is_displayed()
        browser.find_element(By.ID, "manifold-button").click()
        manifold = browser.find_element(By.ID, "manifold")
        wait(browser, lambda d: manifold.get_attribute("naturalWidth") == str(15 * 30 + 2), "grid")
        assert severe_console_entries(browser) == []
