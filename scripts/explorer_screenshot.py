"""A screenshot of the latent-space explorer for the docs: serves a model repository, opens the
explorer in headless chromium (selenium), samples, opens a sample, moves two sliders, draws an
interpolation strip, and saves the page as a PNG.

    .venv/bin/python scripts/explorer_screenshot.py --repository model_repository \
        --model fashion-mlp-vae --output docs/images/explorer.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="fashion-mlp-vae")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "explorer.png")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from server.process.app import VaeServer
    from server.process.settings import Settings
    from tests.conftest import free_port

    settings = Settings(
        repository=args.repository,
        host="127.0.0.1",
        port=0,
        http_port=free_port(),
        metrics_port=0,
        providers=("CPUExecutionProvider",),
        processes=1,
        reload_interval_seconds=0,
    )
    server = VaeServer(settings)
    server.start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1250"):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=Service(executable_path=shutil.which("chromedriver")), options=options
    )
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(f"http://127.0.0.1:{server.http_port}/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        Select(driver.find_element(By.ID, "model")).select_by_visible_text(args.model)
        driver.find_element(By.ID, "count").clear()
        driver.find_element(By.ID, "count").send_keys("30")
        driver.find_element(By.ID, "seed").send_keys("7")
        driver.find_element(By.ID, "sample-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid img")) == 30)
        grid = driver.find_elements(By.CSS_SELECTOR, "#grid img")
        grid[3].click()
        driver.find_element(By.ID, "set-a").click()
        grid[12].click()
        driver.find_element(By.ID, "set-b").click()
        driver.find_element(By.ID, "interpolate-button").click()
        wait.until(lambda d: d.find_element(By.ID, "strip").get_attribute("naturalWidth") != "0")
        for dim, value in ((0, 2.5), (1, -2.0)):
            driver.execute_script(
                "const s = document.querySelector(`#sliders input[data-dim='${arguments[0]}']`);"
                "s.value = String(arguments[1]); s.dispatchEvent(new Event('input'));",
                dim,
                value,
            )
        wait.until(lambda d: int(d.find_element(By.ID, "opened-image").get_attribute("data-decodes") or 0) >= 1)  # fmt: skip
        args.output.parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1100, min(int(height) + 40, 2000))
        driver.save_screenshot(str(args.output))
        print(f"wrote {args.output}")
    finally:
        driver.quit()
        server.stop(grace=0)


if __name__ == "__main__":
    main()
