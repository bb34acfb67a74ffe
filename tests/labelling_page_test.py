"""The labelling page in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): from a tiny run's request_labels to a retrained run, through keyboard
answers, undo, answers kept across a reload and the downloaded CSV; hostile file and class
names shown as text with nothing run."""

import csv
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from comatch_jax.commands import labelling_page, request_labels
from comatch_jax.data import pipeline
from comatch_jax.data.answers import UNKNOWN
from comatch_jax.trainer import train
from folder_training_test import _folder_config, _write_folder
from train_test import RecordingWriter

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTILE_FILE = '<img src=x onerror="alert(1);window.pwned=1">.jpg'
HOSTILE_CLASSES = ["</script>", '<img src=x onerror="alert(2);window.pwned=2">']


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install both)")
    profile = tmp_path_factory.mktemp("profile")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _folder_requests(root, names, rng):
    """Writes `names` under root/unlabeled/ and returns their keys (as unlabeled_paths)."""
    os.makedirs(root / "unlabeled", exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "unlabeled" / name, format="PNG")
    return [f"unlabeled/{name}" for name in names]


def _text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def _press(driver, *keys):
    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def _wait_until_the_browser_holds(driver, progress, timeout=30):
    """Waits until the page opened afresh in a second tab shows `progress`. Chromium hands a
    page's localStorage writes to its browser process asynchronously (seconds on a loaded
    machine), and a reload that starts before they arrive shows the answers from before them;
    a person reloads later. The page only reads localStorage when it opens."""
    page, first = driver.current_url, driver.current_window_handle
    driver.switch_to.new_window("tab")
    try:
        driver.get(page)
        deadline = time.time() + timeout
        while _text(driver, "progress") != progress and time.time() < deadline:
            time.sleep(0.2)
            driver.refresh()
        kept = _text(driver, "progress")
        assert kept == progress, f"a second tab shows {kept!r} after {timeout} s: answers not kept"
    finally:
        driver.close()
        driver.switch_to.window(first)


def _download(driver):
    """Clicks "Download answers" and returns the saved CSV's rows."""
    for old in os.listdir(driver.downloads):
        os.remove(driver.downloads / old)
    driver.find_element(By.ID, "download").click()
    path = driver.downloads / labelling_page.CSV_NAME
    deadline = time.time() + 10
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_from_a_run_through_the_page_to_a_retrained_run(browser, tmp_path, caplog):
    """request_labels writes the page for a tiny image-folder run; answers given with the
    keyboard (with an undo and a reload) are downloaded, and that file trains a new run."""
    rng = np.random.default_rng(0)
    _write_folder(tmp_path / "data", rng)
    for path in (tmp_path / "data" / "unlabeled" / "batch1").iterdir():  # names to quote
        path.rename(path.with_name(f'{path.stem}, "a b".jpg'))
    config = _folder_config(tmp_path / "data")
    config.num_steps = 2
    train.train_and_evaluate(config, str(tmp_path / "run"), writer=RecordingWriter())
    caplog.set_level("INFO", logger="absl")  # an earlier command may have quietened absl
    requests = request_labels.request_labels(
        str(tmp_path / "run"), str(tmp_path / "requests.csv"), budget=4
    )
    page = str(tmp_path / "requests_page" / labelling_page.PAGE_NAME)
    assert f"open {page} in a browser" in caplog.text
    data = pipeline.prepare_data(config)
    keys = [data.unlabeled_paths[i] for i in requests.ids]
    classes, guesses = data.class_names, np.argsort(-requests.probs, axis=1)

    browser.get("file://" + page)
    assert _text(browser, "progress") == "0 of 4 labelled"
    assert _text(browser, "key") == keys[0]
    _press(browser, "1", "2", "0")  # the top guess, the second guess, none of these
    assert _text(browser, "progress") == "3 of 4 labelled"
    _press(browser, Keys.BACKSPACE)  # undo "none of these": back on the third image
    assert _text(browser, "progress") == "2 of 4 labelled"
    assert _text(browser, "position") == "Image 3 of 4"
    assert _text(browser, "current") == "Not answered yet"
    _press(browser, "gre", Keys.ENTER)  # type-ahead search over every class
    assert _text(browser, "progress") == "3 of 4 labelled"
    assert _text(browser, "position") == "Image 4 of 4"
    _press(browser, Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    assert _text(browser, "current") == f"Answer: {classes[guesses[1, 1]]}"

    # Answers live in localStorage: nothing is lost on a reload.
    _wait_until_the_browser_holds(browser, "3 of 4 labelled")
    browser.refresh()
    assert _text(browser, "progress") == "3 of 4 labelled"
    assert _text(browser, "position") == "Image 4 of 4"  # the first unanswered image
    _press(browser, "0")
    answers = [classes[guesses[0, 0]], classes[guesses[1, 1]], "green", UNKNOWN]
    assert _download(browser) == [["path", "label"], *map(list, zip(keys, answers))]

    # The downloaded file, as it is, trains a run: three answers became labeled images.
    config.dataset.extra_labels_csv = str(browser.downloads / labelling_page.CSV_NAME)
    retrained = pipeline.prepare_data(config)
    added = {data.unlabeled_paths[i]: classes[c] for i, c in zip(retrained.labeled_ids, retrained.labels) if i >= 0}  # fmt: skip
    assert added == dict(zip(keys[:3], answers[:3]))
    assert retrained.unknown_ids.tolist() == [requests.ids[3]]
    _, summary = train.train_and_evaluate(config, str(tmp_path / "again"), writer=RecordingWriter())
    assert summary["final_step"] == 2


def test_hostile_file_and_class_names_show_as_text_and_run_nothing(browser, tmp_path):
    rng = np.random.default_rng(1)
    keys = _folder_requests(tmp_path, [HOSTILE_FILE], rng)
    classes = ["cat"] + HOSTILE_CLASSES
    probs = np.array([[0.1, 0.7, 0.2]])  # the hostile names are the top guesses
    page = labelling_page.write_labelling_page(
        str(tmp_path / "page"), keys, [str(tmp_path / keys[0])], probs, [1.0], classes
    )
    # The embedded JSON runs up to the first </script>: escaped names cannot cut it short.
    embedded = open(page, encoding="utf-8").read().split('id="requests">')[1].split("</script>")[0]
    assert json.loads(embedded)["class_names"] == classes
    browser.get("file://" + page)
    assert _text(browser, "key") == keys[0]
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#guesses .name")]
    assert names == [HOSTILE_CLASSES[0], HOSTILE_CLASSES[1], "cat"]
    _press(browser, "<img", Keys.ENTER)  # the search shows and picks the hostile name
    assert _text(browser, "current") == f"Answer: {HOSTILE_CLASSES[1]}"
    assert browser.execute_script("return window.pwned") is None
    # One page image and one strip image: no element was made from a name.
    assert len(browser.find_elements(By.TAG_NAME, "img")) == 2
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert _download(browser) == [["path", "label"], [keys[0], HOSTILE_CLASSES[1]]]


def test_dataset_pixels_and_ids(browser, tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (3, 28, 28, 1), dtype=np.uint8)  # grayscale, as MNIST
    classes = [str(c) for c in range(10)]
    probs = rng.dirichlet(np.ones(10), 3)
    page = labelling_page.write_labelling_page(
        str(tmp_path / "page"), [41, 7, 1999], images, probs, [3, 2, 1], classes, key_column="id"
    )
    assert sorted(os.listdir(tmp_path / "page" / "images")) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "page" / "images" / "000001.png")), images[1, ..., 0]
    )
    browser.get("file://" + page)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#guesses button")) == 9
    image = browser.find_element(By.ID, "image")
    browser.execute_script("return arguments[0].decode()", image)
    assert "pixelated" in image.get_attribute("class")  # small images are upscaled sharply
    _press(browser, "3")
    top3 = classes[np.argsort(-probs[0])[2]]
    assert _download(browser) == [["id", "label"], ["41", top3]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": ["/no/such.jpg", "/no/such.jpg"]}, "cannot read it as an image"),
        ({"scores": [1.0, float("nan")]}, "must be finite"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, kwargs, message):
    arguments = {
        "keys": ["unlabeled/a.jpg", "unlabeled/b.jpg"],
        "images": np.zeros((2, 8, 8, 3), np.uint8),
        "probs": np.full((2, 2), 0.5),
        "scores": [1.0, 0.5],
        "class_names": ["a", "b"],
    } | kwargs
    with pytest.raises(ValueError, match=message.replace("[", r"\[")) as error:
        labelling_page.write_labelling_page(str(tmp_path), **arguments)
    assert "\n" not in str(error.value)


def test_two_request_sets_keep_their_answers_apart(tmp_path):
    def storage_key(keys):
        page = labelling_page.write_labelling_page(
            str(tmp_path / str(len(keys))), keys, np.zeros((len(keys), 4, 4, 3), np.uint8),
            np.full((len(keys), 2), 0.5), np.ones(len(keys)), ["a", "b"],
        )  # fmt: skip
        return open(page, encoding="utf-8").read().split('"storage_key":"')[1][:16]

    assert storage_key(["x.jpg"]) != storage_key(["x.jpg", "y.jpg"])
