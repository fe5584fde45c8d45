"""Plots as a user reads them: parse the SVG (legends, <text>, log axis, colours, title) and
decode the PNG."""

import io
import re
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

SVG = "{http://www.w3.org/2000/svg}"

TWO_GROUPS_ADAM = {
    "optimizer": {"type": "Adam", "lr": 0.001},
    "param_groups": [{"lr": 0.01}, {"lr": 0.001}],
    "scheduler": {"type": "OneCycleLR", "max_lr": [0.01, 0.001], "total_steps": 900},
    "warmup": {"type": "linear", "steps": 100, "start_factor": 0.1},
    "steps": 1000,
    "include": ["momentum"],
}


def _svg(client, body, query=""):
    response = client.post(f"/v1/schedules/compute?format=svg{query}", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    return ET.fromstring(response.content)


def _groups(root, prefix):
    return [g for g in root.iter(f"{SVG}g") if re.fullmatch(prefix + r"_\d+", g.get("id", ""))]


def _texts(node):
    return [
        "".join(t.itertext()).replace("\n", "").replace(" ", "") for t in node.iter(f"{SVG}text")
    ]


def _strokes(node):
    found = re.findall(r"stroke: (#[0-9a-f]{6})", ET.tostring(node, encoding="unicode"))
    return [c for c in found if c != "#cccccc"]  # the legend frame


def test_svg_has_a_legend_in_every_panel_with_one_colour_per_group(client):
    root = _svg(client, TWO_GROUPS_ADAM)
    legends = _groups(root, "legend")
    assert len(legends) == 2  # the lr panel and the momentum panel
    for legend in legends:
        assert _texts(legend) == ["group0", "group1"]
    lr_colours, momentum_colours = (_strokes(legend) for legend in legends)
    assert lr_colours == momentum_colours  # group g has one colour in both panels
    assert len(set(lr_colours)) == 2


def test_svg_text_is_text_and_the_title_names_scheduler_optimizer_warmup_and_groups(client):
    root = _svg(client, TWO_GROUPS_ADAM)
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert len(texts) > 20  # ticks, labels, legends, title: none drawn as glyph paths
    first = next(i for i, t in enumerate(texts) if t.startswith("OneCycleLR"))
    title = " / ".join(texts[first : first + 2])  # the title's two lines
    for part in ("OneCycleLR", "Adam", "linear warmup", "steps=100", "2 param groups"):
        assert part in title, (part, title)
    assert "optimizer step" in texts
    assert "learning rate" in texts


def test_one_group_still_gets_a_legend(client):
    root = _svg(client, {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": 50})
    (legend,) = _groups(root, "legend")
    assert _texts(legend) == ["lr"]
    assert any("no warmup" in "".join(t.itertext()) for t in root.iter(f"{SVG}text"))


def test_yscale_log_draws_a_log_axis(client):
    body = {"scheduler": {"type": "ExponentialLR", "gamma": 0.9}, "steps": 100}
    log_root = _svg(client, body, "&yscale=log")
    linear_root = _svg(client, body)
    log_ticks = _texts(_groups(log_root, "matplotlib.axis")[1])
    linear_ticks = _texts(_groups(linear_root, "matplotlib.axis")[1])
    # 0.1 * 0.9**99 ≈ 3e-6: the log axis shows powers of ten down there, the linear one 0 to 0.1
    assert "10−5" in log_ticks and "10−1" in log_ticks, log_ticks
    assert "learningrate(log)" in log_ticks
    assert not any(t.startswith("10−") for t in linear_ticks), linear_ticks


def test_yscale_is_part_of_the_cache_key_and_of_the_get_form(client):
    url = "/v1/schedules/ExponentialLR?gamma=0.9&steps=100&format=svg"
    linear = client.get(url)
    log = client.get(url + "&yscale=log")
    assert linear.status_code == log.status_code == 200
    assert linear.headers["etag"] != log.headers["etag"]
    assert b"(log)" in log.content and b"(log)" not in linear.content
    bad = client.get(url + "&yscale=cubic")
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["query", "yscale"]


def test_annotate_warnings_lists_them_under_the_plot(client):
    body = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 50}, "steps": 200}
    warnings = client.post("/v1/schedules/compute", json=body).json()["warnings"]
    assert warnings
    root = _svg(client, body, "&annotate=warnings")
    text = " ".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))
    assert "rises again" in text
    plain = _svg(client, body)
    assert "rises again" not in " ".join("".join(t.itertext()) for t in plain.iter(f"{SVG}text"))


def test_png_decodes_with_both_panels_and_log_scale(client):
    response = client.post("/v1/schedules/compute?format=png&yscale=log", json=TWO_GROUPS_ADAM)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "PNG"
    assert image.size[0] == 800 and image.size[1] > 500  # two panels are taller than one
    pixels = np.asarray(image.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.02  # lines and text, not a blank canvas
    blue = np.array([0x1F, 0x77, 0xB4])
    assert (np.abs(pixels.astype(int) - blue).sum(axis=2) < 30).sum() > 500  # group 0's colour


def test_batch_as_svg_is_one_overlay_plot_with_a_colour_and_legend_entry_per_spec(client):
    body = {
        "requests": [
            {"scheduler": {"type": "CosineAnnealingLR", "T_max": 100}, "steps": 100},
            {
                "optimizer": {"type": "Adam", "lr": 0.01},
                "scheduler": {"type": "StepLR", "step_size": 30},
                "warmup": {"type": "linear", "steps": 10},
                "steps": 100,
            },
        ]
    }
    response = client.post("/v1/schedules/batch?format=svg&yscale=log", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(response.content)
    (legend,) = _groups(root, "legend")
    labels = ["".join(t.itertext()) for t in legend.iter(f"{SVG}text")]
    assert labels == [
        "0: CosineAnnealingLR(T_max=100)",
        "1: StepLR(step_size=30) on Adam, linear warmup 10",
    ]
    assert len(set(_strokes(legend))) == 2
    assert "learningrate(log)" in _texts(_groups(root, "matplotlib.axis")[1])
    png = client.post("/v1/schedules/batch?format=png", json=body)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_batch_plot_names_the_spec_that_failed(client):
    body = {
        "requests": [
            {"scheduler": {"type": "StepLR", "step_size": 30}, "steps": 100},
            {"scheduler": {"type": "StepLR", "step_size": 0}, "steps": 100},
        ]
    }
    response = client.post("/v1/schedules/batch?format=svg", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "requests[1]" in response.json()["detail"]
