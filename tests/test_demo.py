"""The try-on web page (m2e_jax/demo.py), driven in a real headless browser (Debian's chromium through
selenium), compared with the CLI (m2e_jax/infer.py, the same tryon_pipeline) on the same files, plus
its HTTP limits.

The browser test loads the page, runs one try-on from the test set (with stages) and one upload at a
size other than the network's, checks the returned images against `python -m m2e_jax.infer` on the
same photos (exactly equal: both run m2e_jax.tryon_pipeline), checks that only the garment region
changed, that the page loaded nothing from elsewhere, and that a bad upload shows the CLI's one-line
message while the server keeps serving. Files are written in the real formats by data_prep.fixtures:
`NAME_IUV.png` as Detectron's `infer_simple.py` writes it through OpenCV, and detectron2
`apply_net.py dump` zips (densepose/vis/extractor.py's fields).

Set M2E_DEMO_SCREENSHOT=PATH to keep the browser's screenshot (docs/demo.png was taken this way).
"""

import base64
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from configs import synthetic
from data_prep import fixtures
from m2e_jax import demo, densepose, infer, tryon_pipeline
from m2e_jax.synthetic import dataset
from tests import processes
from tests.test_infer import write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A checkpoint of the tiny synthetic config (random generator weights in the trainer's layout,
    as tests/test_infer.py writes them: a fresh init would take a minute to compile),
    the demo serving it on a free port of 127.0.0.1, and photo files twice the network's size for
    uploads. M2E_DEMO_WORKDIR=W serves W's checkpoint instead (how docs/demo.png was taken)."""
    root = tmp_path_factory.mktemp("demo")
    workdir = os.environ.get("M2E_DEMO_WORKDIR") or str(root / "work")
    if not os.environ.get("M2E_DEMO_WORKDIR"):
        cfg = synthetic.get_config("test")
        cfg.dataset.data_dir = str(root / "data")
        write_checkpoint(workdir, cfg, 2, seed=3)
    the_demo = demo.load_demo(workdir=workdir, max_upload_mb=1.0)
    dataset.write_dataset(root / "big", 0, 2 * the_demo.net.height, 2 * the_demo.net.width, 0, 2)
    server = demo.make_server(the_demo, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"root": root, "demo": the_demo, "url": demo.server_url(server), "server": server,
           "workdir": workdir, "big": root / "big" / "test" / "images"}
    server.shutdown()
    server.server_close()


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,"), url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def cli_tryon(workdir, model, person, out, *extra) -> tuple[int, np.ndarray | None]:
    rc = infer.main(["--workdir", workdir, "--model_image", str(model), "--person_image", str(person),
                     "--output", str(out), *extra])
    return rc, (np.asarray(Image.open(out)) if rc == 0 else None)


def write_test_photo(source, index: int, role: str, folder, name: str):
    """Test example `index`'s model/person side as NAME.png, NAME_IUV.png, NAME_parse.png."""
    photo = tryon_pipeline.example_photos(source[index])[demo.ROLES.index(role)]
    fixtures.write_rgb(folder / f"{name}.png", photo.image)
    fixtures.write_iuv_png(folder / f"{name}_IUV.png", photo.iuv)
    fixtures.write_label_png(folder / f"{name}_parse.png", photo.parse)
    return folder / f"{name}.png", photo


def assert_only_garment_changed(result, person_image, person_iuv, person_parse, kind, margin=0):
    """The try-on differs from P, and only inside P's garment region R_P (the garment's DensePose
    parts joined with P's parsing mask; the tiny config neither dilates nor feathers it), grown by
    `margin` pixels where the network-size region was resized to the photo's size."""
    k = densepose.GARMENT_KINDS.index(kind)
    region = (densepose.garment_parts_mask(person_iuv, kind)[..., 0] > 0) | (person_parse == k + 1)
    region = densepose.dilate(region[None, ..., None].astype(np.float32), margin)[0, ..., 0] > 0
    changed = np.any(result != person_image, axis=-1)
    assert changed.sum() > 20, changed.sum()
    assert not np.any(changed & ~region), np.argwhere(changed & ~region)[:5]


def photo_names(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".png")
                  and not f[:-4].endswith(("_IUV", "_INDS", "_parse")))


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + "api/tryon", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def upload(path, name=None) -> dict:
    with open(path, "rb") as f:
        return {"name": name or os.path.basename(path), "data": base64.b64encode(f.read()).decode()}


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium / chromedriver not installed "
                    "(Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=960,1000",
              "--hide-scrollbars", "--disable-gpu", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def run_and_wait(driver, runs_before: int) -> str:
    """Clicks "Try on" and waits for the page to finish; returns the page's error line ('' if none)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 120).until(  # the first upload of a size compiles
        lambda d: int(d.find_element(By.ID, "status").get_attribute("data-run")) > runs_before)
    return driver.find_element(By.ID, "error").text


def test_page_in_a_browser(served, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from m2e_jax.readers import images, iuv_png

    d, the_demo, url = browser, served["demo"], served["url"]
    kind = densepose.GARMENT_KINDS[the_demo.garment_kind]
    h, w = the_demo.net.height, the_demo.net.width
    d.get(url)
    thumbs = d.find_elements(By.CSS_SELECTOR, "#model-thumbs img")
    assert len(thumbs) == min(the_demo.test_count, 48) > 0

    # 1. One unpaired test example (M, P and the true P*), with stages: equals the CLI on the same
    # photos written as files; its ground truth is shown beside it.
    test = the_demo.test_set
    u = next(i for i in range(len(test)) if test[i]["has_target"] and not test[i]["paired"])
    d.find_element(By.CSS_SELECTOR, f'#model-thumbs img[data-index="{u}"]').click()
    box = d.find_element(By.ID, "person-index")  # any index, typed (the strip shows the first 48)
    box.clear()
    box.send_keys(str(u), Keys.TAB)
    d.find_element(By.ID, "stages-on").click()
    assert run_and_wait(d, 0) == ""
    shot = os.environ.get("M2E_DEMO_SCREENSHOT") or str(tmp_path / "demo.png")
    d.save_screenshot(shot)
    assert Image.open(shot).size[0] > 0
    result = decode_data_url(d.find_element(By.ID, "out-result").get_attribute("src"))
    assert result.shape == (h, w, 3)
    np.testing.assert_array_equal(decode_data_url(d.find_element(By.ID, "out-truth").get_attribute("src")),
                                  test[u]["target_image"])
    m_path, _ = write_test_photo(test, u, "model", tmp_path, "m")
    p_path, person = write_test_photo(test, u, "person", tmp_path, "p")
    picked = result
    assert_only_garment_changed(result, person.image, person.iuv, person.parse, kind)
    stages = {s.get_attribute("data-stage"): decode_data_url(s.get_attribute("src"))
              for s in d.find_elements(By.CSS_SELECTOR, "#stages img")}
    assert list(stages) == ["warp", "PAN", "TRN", "FTN"]
    assert all(s.shape == (h, w, 3) for s in stages.values())
    np.testing.assert_array_equal(stages["FTN"], result)  # at network size the paste-back is P' itself
    assert d.find_element(By.ID, "download").get_attribute("href") == d.find_element(
        By.ID, "out-result").get_attribute("src")

    # 2. An upload at twice the network's size: the result comes back at the photo's size.
    big = served["big"]
    names = photo_names(big)
    person_path = big / names[0]
    d.find_element(By.ID, "person-upload").click()
    d.find_element(By.ID, "person-photo").send_keys(str(person_path))
    d.find_element(By.ID, "person-densepose").send_keys(str(big / (names[0][:-4] + "_IUV.png")))
    d.find_element(By.ID, "person-parse").send_keys(str(big / (names[0][:-4] + "_parse.png")))
    d.find_element(By.ID, "stages-on").click()  # stages off again
    assert run_and_wait(d, 1) == ""
    result = decode_data_url(d.find_element(By.ID, "out-result").get_attribute("src"))
    assert result.shape == (2 * h, 2 * w, 3)
    assert d.find_element(By.ID, "size").text == f"{2 * w}x{2 * h} PNG"
    assert not d.find_elements(By.CSS_SELECTOR, "#stages img")
    # Both results equal the CLI's on the same photos as files (one `--pairs` run: one model load).
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"model,person\n{m_path},{p_path}\n{m_path},{person_path}\n")
    assert infer.main(["--workdir", served["workdir"], "--pairs", str(pairs), "--output_dir",
                       str(tmp_path / "cli"), "--batch_size", "1"]) == 0
    cli = lambda p: np.asarray(Image.open(tmp_path / "cli" / f"m__{os.path.basename(p)[:-4]}.png"))
    np.testing.assert_array_equal(picked, cli(p_path))
    np.testing.assert_array_equal(result, cli(person_path))
    assert_only_garment_changed(result, images.read_rgb(person_path),
                                iuv_png.read_iuv_png(big / (names[0][:-4] + "_IUV.png")),
                                images.read_labels(big / (names[0][:-4] + "_parse.png")), kind, margin=2)

    # 3. A bad upload (DensePose of another size): the CLI's line, and the server still serves.
    small = tmp_path / "small_IUV.png"
    fixtures.write_iuv_png(small, iuv_png.read_iuv_png(big / (names[0][:-4] + "_IUV.png"))[:, :30])
    d.find_element(By.ID, "person-densepose").send_keys(str(small))
    error = run_and_wait(d, 2)
    assert error == f"small_IUV.png: IUV is {2 * h}x30 but the photo is {2 * h}x{2 * w}", error
    capsys.readouterr()
    assert cli_tryon(served["workdir"], m_path, person_path, tmp_path / "cli2.png",
                     "--person_iuv", str(small))[0] == 1
    cli_line = capsys.readouterr().err.strip()
    assert cli_line == f"m2e_jax.infer: error: {tmp_path}/{error}", cli_line  # the CLI's line, file named
    d.find_element(By.ID, "person-pick").click()
    assert run_and_wait(d, 3) == ""

    # Nothing came from anywhere but this server (or data: URLs).
    urls = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(url) or u.startswith("data:") for u in urls), urls


def test_bad_uploads_get_one_line_and_the_server_keeps_serving(served, tmp_path):
    url, the_demo = served["url"], served["demo"]
    big = served["big"]
    name = photo_names(big)[0][:-4]
    photo, iuv = big / f"{name}.png", big / f"{name}_IUV.png"
    h, w, n = 2 * the_demo.net.height, 2 * the_demo.net.width, the_demo.test_count
    empty_dump = tmp_path / "dump.pkl"  # apply_net.py dump of a photo where no person was detected
    fixtures.write_torch_dump(empty_dump, [{"file_name": f"photos/{name}.png", "scores": [], "boxes":
                                            np.zeros((0, 4)), "results": []}])
    box = (4.0, 6.0, 40.0, 60.0)
    person_dump = tmp_path / "people.pkl"
    labels = np.full((54, 36), 2, np.int64)
    fixtures.write_torch_dump(person_dump, [{"file_name": f"x/{name}.jpg", "scores": [0.9], "boxes": [box],
                                             "results": [(labels, np.full((2, 54, 36), 0.5, np.float32))]}])
    bomb = tmp_path / "bomb.png"  # 8000x6000 in a few KB: refused from the header, not decoded
    fixtures.write_png_bomb(bomb, 6000, 8000)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    pick = {"pick": 1}
    cases = {
        "no DensePose": ({"photo": upload(photo)}, f"{name}.png: no DensePose output uploaded"),
        "dump, no person": ({"photo": upload(photo), "densepose": upload(empty_dump)},
                            "dump.pkl [photos/"),
        "dump, other photo": ({"photo": upload(photo, "other.png"), "densepose": upload(person_dump)},
                              "people.pkl: no entry for other.png"),
        "unreadable photo": ({"photo": upload(broken), "densepose": upload(iuv)},
                             "broken.png: unreadable image"),
        "image bomb": ({"photo": upload(bomb), "densepose": upload(iuv)},
                       "bomb.png: image is 8000x6000 (48.0 megapixels), over the limit of 40.0 megapixels"),
        "not base64": ({"photo": {"name": "a.png", "data": "%%%"}},
                       "person photo: the upload is not valid base64"),
        "pick out of range": ({"pick": n}, f"person pick {n}: the test set has {n} photos (0..{n - 1})"),
        "pick a path": ({"pick": "../../etc/passwd"}, "person pick: expected a test-set index"),
    }
    for case, (person, expected) in cases.items():
        status, reply = post(url, json.dumps({"model": pick, "person": person}).encode())
        assert status == 422 and "\n" not in reply["error"], (case, reply)
        assert expected in reply["error"], (case, reply["error"])
    # the dump that holds this photo's person works, found by the upload's name as the CLI finds it
    status, reply = post(url, json.dumps({"model": pick, "person": {"photo": upload(photo), "densepose":
                                                                  upload(person_dump)}}).encode())
    assert status == 200 and decode_data_url(reply["result"]).shape == (h, w, 3), reply.get("error")
    # a no-person dump: the CLI's words
    status, reply = post(url, json.dumps({"model": pick, "person": {"photo": upload(photo), "densepose":
                                                                  upload(empty_dump)}}).encode())
    assert "no person found" in reply["error"]
    # a person photo without a parsing map beside a model photo with one: this checkpoint trained on
    # M's map alone (model.person_parse_dropout), so the page keeps it without a note, as infer does
    # (tests/test_infer.py: a checkpoint that did not gets infer's "both are ignored" line)
    status, reply = post(url, json.dumps({"model": pick, "person": {"photo": upload(photo), "densepose":
                                                                  upload(iuv)}}).encode())
    assert status == 200 and not any("no parsing map" in n for n in reply["notes"]), reply
    assert the_demo.net.uses_model_parsing_alone
    # --max_pixels is the page's limit
    small_limit = dataclasses.replace(the_demo, max_pixels=h * w - 1)
    reply = small_limit.answer({"model": pick, "person": {"photo": upload(photo), "densepose": upload(iuv)}})
    assert reply["error"].startswith(f"{name}.png: image is {w}x{h} ("), reply
    # an upload named like a path reaches no file system path
    evil = "../../demo_escape_test.png"
    status, reply = post(url, json.dumps({"model": pick, "person": {"photo": upload(photo, evil)}}).encode())
    assert reply["error"].startswith("demo_escape_test.png: no DensePose")
    assert not any(os.path.exists(os.path.join(base, "demo_escape_test.png"))
                   for base in (ROOT, os.path.dirname(ROOT), "/tmp", os.getcwd()))
    # not JSON, wrong shape
    assert post(url, b"{not json")[0] == 400
    assert post(url, b"[1, 2]")[1]["error"] == "bad request: expected a JSON object"
    # over the size limit: refused from the header alone, before any byte of the body is read
    with socket.create_connection(served["server"].server_address[:2], timeout=10) as s:
        s.sendall(b"POST /api/tryon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000000\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.0 413") or answer.startswith("HTTP/1.1 413"), answer[:80]
    assert "upload too large: 5.0 MB (limit 1.0 MB, --max_upload_mb)" in answer
    # test images are addressed by index only
    for bad in (f"api/test/{n}/model.png", "api/test/../../etc/passwd", "api/test/1/target.png"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + bad, timeout=10)
        assert e.value.code == 404
    with urllib.request.urlopen(url + f"api/test/{n - 1}/person.png", timeout=10) as r:
        assert Image.open(io.BytesIO(r.read())).size == (w // 2, h // 2)
    # still serving
    status, reply = post(url, json.dumps({"model": pick, "person": {"pick": 2}}).encode())
    assert status == 200 and "result" in reply
    assert served["server"].server_address[0] == "127.0.0.1"
    assert demo.parser().parse_args(["--workdir", "w"]).host == "127.0.0.1"


def test_command_prints_its_address(served, tmp_path):
    """`python -m m2e_jax.demo --workdir W` in a fresh process: one line with the address, the page
    there, one line and exit 1 for a missing checkpoint."""
    env = processes.cpu_env(1)  # one device, as a user's fresh process has
    bad = subprocess.run([sys.executable, "-m", "m2e_jax.demo", "--workdir", str(served["root"] / "nowhere"),
                          "--port", "0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "m2e_jax.demo: error: --workdir" in bad.stderr and "no such checkpoint directory" in bad.stderr
    port = served["server"].server_address[1]  # taken by the test's own server
    taken = subprocess.run([sys.executable, "-m", "m2e_jax.demo", "--workdir", served["workdir"],
                            "--port", str(port)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert taken.returncode == 1 and taken.stderr.strip().count("\n") == 0, taken.stderr
    assert f"m2e_jax.demo: error: --host 127.0.0.1 --port {port}: cannot listen there (" in taken.stderr
    command = [sys.executable, "-m", "m2e_jax.demo", "--workdir", served["workdir"], "--port", "0"]
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("m2e_jax.demo: serving "), (line, (tmp_path / "stderr.txt").read_text())
        assert " at http://127.0.0.1:" in line, line
        address = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(address, timeout=30) as r:
            html = r.read().decode()
        assert "M2E-TON try-on" in html and "http://" not in html and "https://" not in html
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        err.close()


def test_without_a_test_set_the_page_offers_uploads_and_says_why(served, tmp_path):
    """A checkpoint whose dataset is not on this machine (a TFDS config, records elsewhere) still
    serves uploads; picks get one line saying why there is no test set."""
    from configs import deepfashion

    cfg = deepfashion.get_config()
    cfg.dataset.data_dir = str(tmp_path / "no_records_here")
    source, note = demo.open_test_set(cfg)
    assert source is None and note.startswith("test set unavailable (") and "\n" not in note
    bare = dataclasses.replace(served["demo"], test_set=None, test_note=note)
    reply = bare.answer({"model": {"pick": 0}, "person": {"pick": 0}})
    assert reply == {"error": f"model pick 0: the test set has 0 photos ({note})"}
    assert bare.info()["test_count"] == 0
