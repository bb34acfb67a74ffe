"""A screenshot of the labelling page as request_labels writes it for a real run, a few
images answered with the keyboard (experiments/labelling_page.png, the README's picture).

  cp -r /work/data/open_set_runs/pool0/supervised_seed0 /tmp/shot/supervised_seed0
  cp -r /work/data/open_set_runs/cache/pool0 /tmp/shot/cache   # then set the copy's
  #   config.json dataset.cache_dir to /tmp/shot/cache (the original stays read-only)
  python -m comatch_jax.commands.request_labels --workdir=/tmp/shot/supervised_seed0 \\
      --budget=200 --out=/tmp/shot/requests.csv
  python experiments/labelling_page_screenshot.py --page=/tmp/shot/requests_page/labelling.html \\
      --truth=/work/data/open_set/pool0/unlabeled_truth.csv

The run: supervised-only on an image folder of CIFAR-10 animal photos (6 classes, 150
labeled, 5,000 unlabeled, 32x32). The first `--answers` requests are answered as a careful
person would, with their true class from `--truth` (path,label relative to unlabeled/): a
digit key where the class is among the model's guesses, else the type-ahead search. Headless
Chromium (Debian's chromium + chromium-driver, through selenium) at a 1100x680 viewport.
"""

import argparse
import csv
import os
import tempfile

from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page", required=True)
    parser.add_argument("--truth", required=True)
    parser.add_argument("--answers", type=int, default=4)
    parser.add_argument("--out", default="experiments/labelling_page.png")
    args = parser.parse_args()
    with open(args.truth, newline="", encoding="utf-8") as f:
        truth = {row["path"]: row["label"] for row in csv.DictReader(f)}
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in "--headless --no-sandbox --disable-gpu --no-first-run".split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='profile_')}")
    driver = webdriver.Chrome(
        service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options
    )
    try:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1100, "height": 680, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get("file://" + os.path.abspath(args.page))
        for _ in range(args.answers):
            key = driver.find_element("id", "key").text
            label = truth[os.path.relpath(key, "unlabeled")]
            names = [e.text for e in driver.find_elements("css selector", "#guesses .name")]
            keys = str(names.index(label) + 1) if label in names else [label, Keys.ENTER]
            ActionChains(driver).send_keys(*keys).perform()
            print(f"{key}: {label}")
        driver.save_screenshot(args.out)
        print(f"saved {args.out}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
