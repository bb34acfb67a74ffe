"""Label Studio for real, once: our tasks and labelling config in, annotations through its
API, its three export formats out, read back by comatch_jax.data.answers (what
--config.dataset.extra_labels_csv reads).

  python -m venv /work/lsvenv && /work/lsvenv/bin/pip install label-studio
  PYTHONPATH=. python experiments/label_studio_round_trip.py --label_studio=/work/lsvenv/bin/label-studio \\
      --images=/work/data/cifar10_folder --out=tests/testdata/label_studio

Copies 8 images of FOLDER/unlabeled (two renamed to hostile names: spaces, &, #, ?, %, +,
<img ...>) into a temporary image folder, writes the requests as Label Studio files
(stand-in predictions: random probabilities, seed 0), starts Label Studio on it (SQLite,
no network, a user and token made on the command line), creates the project and its Local
Storage, imports the tasks, checks that Label Studio serves every image at the URL we
wrote, annotates through the API (one task cancelled, one given two annotations, one
answered "none of these"), exports JSON, JSON_MIN and CSV into --out, reads each back with
answers.read_answers and checks them against the annotations given. Stops the server.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from comatch_jax.commands import request_labels
from comatch_jax.data import answers
from comatch_jax.data.answers import CHOICES_NAME, IMAGE_NAME, UNKNOWN as UNKNOWN_LABEL

TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a throwaway server's, made up here
HOSTILE = ["cat & dog #1?%+.jpg", "<img src=x onerror=alert(1)>.jpg"]


def api(port, method, path, body=None):
    request = urllib.request.Request(
        f"http://localhost:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label_studio", default="/work/lsvenv/bin/label-studio")
    parser.add_argument("--images", default="/work/data/cifar10_folder")
    parser.add_argument("--out", default="tests/testdata/label_studio")
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="label_studio_")
    root = os.path.join(work, "images")  # the image folder and the document root
    os.makedirs(os.path.join(root, "unlabeled"))
    sources = sorted(os.listdir(os.path.join(args.images, "unlabeled")))[:8]
    names = sources[:6] + HOSTILE
    for source, name in zip(sources, names):
        shutil.copy(
            os.path.join(args.images, "unlabeled", source), os.path.join(root, "unlabeled", name)
        )
    keys = [f"unlabeled/{name}" for name in names]
    class_names = sorted(os.listdir(os.path.join(args.images, "labeled")))
    probs = np.random.default_rng(0).dirichlet(np.ones(len(class_names)), len(keys))
    scores = -np.sum(probs * np.log(probs), axis=1)  # entropy, as request_labels ranks
    tasks_file = os.path.join(work, "requests_tasks.json")  # and requests_label_config.xml
    request_labels.write_label_studio_files(
        os.path.join(work, "requests"),
        [os.path.join(root, key) for key in keys],
        probs.argmax(1),
        scores,
        class_names,
        document_root=root,
    )
    env = dict(
        os.environ,
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=root,
        LABEL_STUDIO_BASE_DATA_DIR=os.path.join(work, "label_studio_data"),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
    )
    command = [args.label_studio, "start", "--no-browser", "--port", str(args.port)]
    command += ["--username", "labeller@example.com", "--password", "not-a-secret-1"]
    command += ["--user-token", TOKEN, "--enable-legacy-api-token"]
    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        started = time.time()
        while True:
            try:
                api(args.port, "GET", "/api/projects/")
                break
            except OSError:
                if server.poll() is not None or time.time() - started > 300:
                    sys.exit(f"Label Studio did not start; see {log.name}")
                time.sleep(2)
        print(
            f"Label Studio {json.loads(api(args.port, 'GET', '/api/version'))['release']} "
            f"up in {time.time() - started:.0f} s"
        )
        config = open(os.path.join(work, "requests_label_config.xml"), encoding="utf-8").read()
        project = json.loads(
            api(args.port, "POST", "/api/projects/", {"title": "requests", "label_config": config})
        )["id"]
        storage = {
            "project": project,
            "path": os.path.join(root, "unlabeled"),
            "title": "unlabeled",
            "use_blob_urls": False,
        }
        api(args.port, "POST", "/api/storages/localfiles/", storage)
        with open(tasks_file, encoding="utf-8") as f:
            api(args.port, "POST", f"/api/projects/{project}/import", json.load(f))
        tasks = json.loads(api(args.port, "GET", f"/api/tasks/?project={project}&page_size=100"))[
            "tasks"
        ]
        tasks.sort(key=lambda t: t["id"])
        for task, key in zip(tasks, keys):  # Label Studio serves each file at the URL we wrote
            served = api(args.port, "GET", task["data"]["image"])
            assert served == open(os.path.join(root, key), "rb").read(), key
        print(f"imported {len(tasks)} tasks; every image served back byte-identical")

        def annotate(task, label=None):  # no label: cancel (skip) the task
            choice = {"type": "choices", "value": {"choices": [label]}}
            choice |= {"from_name": CHOICES_NAME, "to_name": IMAGE_NAME}
            body = {"result": [] if label is None else [choice], "was_cancelled": label is None}
            api(args.port, "POST", f"/api/tasks/{task['id']}/annotations/", body)
            time.sleep(1.1)  # distinct updated_at times

        annotate(tasks[0], class_names[3])
        annotate(tasks[1])  # cancelled
        annotate(tasks[2], class_names[5])  # two annotations: the later one counts
        annotate(tasks[2], class_names[6])
        annotate(tasks[3], UNKNOWN_LABEL)
        annotate(tasks[6], class_names[0])  # the hostile names
        annotate(tasks[7], class_names[9])
        expected = {
            keys[0]: class_names[3],
            keys[2]: class_names[6],
            keys[3]: UNKNOWN_LABEL,
            keys[6]: class_names[0],
            keys[7]: class_names[9],
        }
        os.makedirs(args.out, exist_ok=True)
        for export_type, name in (
            ("JSON", "export.json"),
            ("JSON_MIN", "export_min.json"),
            ("CSV", "export.csv"),
        ):
            data = api(args.port, "GET", f"/api/projects/{project}/export?exportType={export_type}")
            with open(os.path.join(args.out, name), "wb") as f:
                f.write(data)
            read = answers.read_answers(
                os.path.join(args.out, name), class_names, root=root, unlabeled_paths=keys
            )
            paths = [keys[i] for i in [*read.ids, *read.unknown_ids]]
            labels = [class_names[c] for c in read.labels] + [UNKNOWN_LABEL] * len(read.unknown_ids)
            print(f"{export_type:8s} -> {name}: {len(paths)} answers: {list(zip(paths, labels))}")
            assert dict(zip(paths, labels)) == expected, export_type
        shutil.copy(tasks_file, os.path.join(args.out, "tasks.json"))
        with open(os.path.join(args.out, "labelling_config.xml"), "w", encoding="utf-8") as f:
            f.write(config)
        print(f"wrote the exports, tasks.json and labelling_config.xml to {args.out}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
