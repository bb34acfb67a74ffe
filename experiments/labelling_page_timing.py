"""The labelling page at the paper's budget: 12,800 requests over 800 classes, in headless
Chromium (Debian's chromium + chromium-driver, through selenium).

  python experiments/labelling_page_timing.py --images=/work/data/cifar10_folder/unlabeled \\
      --screenshot=/tmp/labelling_page_12800.png

Writes the page for 12,800 requests (the folder's images, reused under distinct keys, and
stand-in guesses: Dirichlet probabilities over 800 made-up class names), then measures in
the browser: the time to load the page (navigation start to the load event, the requests'
JSON parsed and the first image shown), paging 100 images with the arrow key and answering
100 with key 1 on top of 12,000 answers already kept (per key: the handler and the next
frame), and a type-ahead search over the 800 names. Prints the figures as JSON and, with
--screenshot, saves one with a search under way (the README's picture of a real run is
experiments/labelling_page_screenshot.py's).
"""

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time

import numpy as np
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains

from comatch_jax.commands import labelling_page

ADJECTIVES = "red green blue black white spotted striped tiny giant wild gray golden silver \
dark pale northern southern eastern western common rare little great lesser hairy smooth \
long short round flat tall broad narrow young old marsh river desert forest mountain".split()
NOUNS = "heron finch beetle lizard terrier spaniel warbler moth frog snake crab shark tree \
cactus fern orchid kettle teapot ladder wagon".split()

# Dispatches `count` keydown events, one per animation frame; returns each one's time from
# dispatch to the end of the next frame's callbacks (the handler, the DOM update, style).
STEP_SCRIPT = """
const [key, count, done] = arguments;
const times = [];
(async () => {
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    document.dispatchEvent(new KeyboardEvent('keydown', {key: key, bubbles: true}));
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    times.push(performance.now() - start);
  }
  done(times);
})();
"""


def browser(window, profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless --no-sandbox --disable-gpu --disable-background-networking "
        "--disable-component-update --disable-sync --no-first-run"
    ).split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={window}")
    driver = webdriver.Chrome(
        service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options
    )
    driver.set_script_timeout(300)
    return driver


def summary(times):
    times = np.asarray(times)
    return {"median_ms": round(float(np.median(times)), 2), "max_ms": round(float(times.max()), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="/work/data/cifar10_folder/unlabeled")
    parser.add_argument("--requests", type=int, default=12800)
    parser.add_argument("--screenshot", default="")
    parser.add_argument("--window", default="1100,820")
    args = parser.parse_args()
    class_names = [f"{a} {n}" for a, n in itertools.product(ADJECTIVES, NOUNS)][:800]
    files = sorted(os.listdir(args.images))
    keys = [
        f"unlabeled/batch{i // len(files)}/{files[i % len(files)]}" for i in range(args.requests)
    ]
    images = [os.path.join(args.images, files[i % len(files)]) for i in range(args.requests)]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(len(class_names), 0.02), args.requests)
    scores = np.sort(-np.sum(probs * np.log(probs + 1e-12), axis=1))[::-1]
    work = tempfile.mkdtemp(prefix="labelling_page_")
    directory = os.path.join(work, "page")
    started = time.time()
    page = labelling_page.write_labelling_page(
        directory,
        keys,
        images,
        probs,
        scores,
        class_names,
        title=f"Label requests: {args.requests:,} images, {len(class_names)} classes",
    )
    figures = {"requests": args.requests, "classes": len(class_names)}
    figures["write_page_s"] = round(time.time() - started, 1)
    figures["page_mb"] = round(os.path.getsize(page) / 1e6, 2)
    driver = browser(args.window, os.path.join(work, "profile"))
    try:
        loads = []
        for _ in range(3):
            driver.get("file://" + page)
            loads.append(driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return [n.domContentLoadedEventEnd, n.loadEventEnd];"
            ))  # fmt: skip
        figures["load_ms"] = {
            "dom_content_loaded": [round(a) for a, _ in loads],
            "load_event": [round(b) for _, b in loads],
        }
        paging = driver.execute_async_script(STEP_SCRIPT, "ArrowRight", 100)
        figures["page_100_with_arrow_key"] = summary(paging) | {
            "total_s": round(sum(paging) / 1e3, 2)
        }
        driver.execute_script(  # 12,000 answers kept from an earlier session
            "for (let i = 200; i < 12200; i++) localStorage.setItem(STORE + i, NAMES[i % 800]);"
        )
        driver.refresh()
        figures["progress_after_reload"] = driver.find_element("id", "progress").text
        driver.execute_script("go(0);")
        answering = driver.execute_async_script(STEP_SCRIPT, "1", 100)
        figures["answer_100_with_12000_kept"] = summary(answering) | {
            "total_s": round(sum(answering) / 1e3, 2)
        }
        figures["progress_after_answers"] = driver.find_element("id", "progress").text
        search = driver.execute_script(
            "const box = document.getElementById('search'); const start = performance.now();"
            "box.value = 'stri'; box.dispatchEvent(new Event('input'));"
            "return [performance.now() - start, document.querySelectorAll('#matches li').length];"
        )
        figures["search_ms"], figures["search_matches_shown"] = round(search[0], 2), search[1]
        driver.execute_script("go(102); document.getElementById('search').value = '';")
        for key in ("2", "1"):
            ActionChains(driver).send_keys(key).perform()
        ActionChains(driver).send_keys("spotted w").perform()
        if args.screenshot:
            driver.save_screenshot(args.screenshot)
            figures["screenshot"] = args.screenshot
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
