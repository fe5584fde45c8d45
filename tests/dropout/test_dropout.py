"""POST /v1/dropout: the seed's example, parity with torch.nn run here, edge cases, errors."""

import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.settings import Settings

URL = "/v1/dropout"
PROBLEM = "application/problem+json"


def run(client: TestClient, **body) -> dict:
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def problem(response, status: int, *fragments: str) -> dict:
    """Assert a problem+json error whose detail names every fragment; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


# --------------------------------------------------------------------------- the seed


def test_seed_example_output_is_input_times_mask_over_keep_probability(client):
    body = run(client, variant="Dropout", p=0.3, inplace=False, shape=[2, 3, 4], seed=0)

    x, out, mask = np.float32(body["input"]), np.float32(body["output"]), np.array(body["mask"])
    assert x.shape == out.shape == mask.shape == (2, 3, 4)
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_allclose(out, x * mask / (1 - 0.3), rtol=1e-6, atol=0)
    assert body["scale"] == pytest.approx(1 / 0.7)
    assert body["seed"] == 0
    assert body["device"] == "cpu"


def test_seed_example_equals_torch_nn_dropout_from_the_same_seed(client):
    body = run(client, variant="Dropout", p=0.3, shape=[2, 3, 4], seed=0)

    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 4)
    output = torch.nn.Dropout(p=0.3, inplace=False)(inputs)

    assert torch.equal(t(body["input"]), inputs)
    assert torch.equal(t(body["output"]), output)


# --------------------------------------------------------------------------- parity


def _torch_reference(variant: str, p: float, x: torch.Tensor, inplace: bool) -> torch.Tensor:
    module = getattr(torch.nn, variant)(p=p, inplace=inplace)
    if variant == "Dropout2d" and x.dim() == 3:
        return module(x.unsqueeze(0)).squeeze(0)
    return module(x)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize(
    ("variant", "shape"),
    [
        ("Dropout", [2, 3, 4]),
        ("Dropout1d", [2, 3, 5]),
        ("Dropout1d", [3, 5]),
        ("Dropout2d", [2, 3, 4, 4]),
        ("Dropout2d", [3, 4, 4]),
        ("Dropout3d", [2, 3, 2, 2, 2]),
        ("Dropout3d", [3, 2, 2, 2]),
        ("AlphaDropout", [2, 3, 4]),
        ("FeatureAlphaDropout", [2, 3, 4, 4]),
    ],
)
def test_every_variant_equals_torch_from_the_same_seed(client, variant, shape, inplace):
    tensors = {"return": ["input", "output", "mask", "input_after"]}
    body = run(client, variant=variant, p=0.4, shape=shape, seed=7, inplace=inplace, **tensors)

    torch.manual_seed(7)
    x = torch.randn(shape)
    before = x.clone()
    output = _torch_reference(variant, 0.4, x, inplace)

    assert torch.equal(t(body["input"]), before)
    assert torch.equal(t(body["output"]), output)
    assert torch.equal(t(body["input_after"]), x)  # rewritten by torch only when inplace
    assert list(np.shape(body["mask"])) == shape


def test_uniform_and_explicit_inputs_equal_torch(client):
    body = run(client, p=0.5, shape=[4, 5], distribution="uniform", seed=11)
    torch.manual_seed(11)
    x = torch.rand(4, 5)
    assert torch.equal(t(body["input"]), x)
    assert torch.equal(t(body["output"]), torch.nn.Dropout(0.5)(x))

    values = [[1.5, -2.0, 3.25], [0.5, 4.0, -1.0]]
    body = run(client, p=0.5, input=values, seed=12)
    torch.manual_seed(12)
    assert torch.equal(t(body["output"]), torch.nn.Dropout(0.5)(t(values)))


def test_alpha_mask_marks_elements_given_the_affine_transform(client):
    body = run(client, variant="AlphaDropout", p=0.3, shape=[1000], seed=5)
    x, out = np.float32(body["input"]), np.float32(body["output"])
    mask = np.array(body["mask"], dtype=bool)
    affine = body["alpha_transform"]

    assert 0 < mask.sum() < mask.size
    np.testing.assert_allclose(
        out[mask], affine["scale"] * x[mask] + affine["shift"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(out[~mask], affine["dropped_value"], rtol=1e-6)


def test_mask_is_exact_where_the_input_is_zero(client):
    """A zero input gives a zero output kept or not; the mask still follows torch's noise."""
    values = [[float((i + j) % 2) * (i + 1) for j in range(8)] for i in range(8)]  # half zeros
    body = run(client, p=0.5, input=values, seed=21)

    torch.manual_seed(21)
    reference = torch.nn.Dropout(0.5)(torch.ones(8, 8)) != 0
    zeros = t(values) == 0
    assert reference[zeros].any() and not reference[zeros].all()

    assert torch.equal(torch.tensor(body["mask"], dtype=torch.bool), reference)
    shifted = run(client, p=0.5, input=[[v + 10 for v in row] for row in values], seed=21)
    assert body["mask"] == shifted["mask"]  # the mask depends on the seed, not on the values


# --------------------------------------------------------------------------- seeds


def test_same_seed_same_request_gives_identical_responses(client):
    request = {"variant": "Dropout2d", "p": 0.5, "shape": [2, 8, 3, 3], "seed": 123}
    first = client.post(URL, json=request)
    second = client.post(URL, json=request)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content

    other = run(client, **{**request, "seed": 124})
    assert other["mask"] != first.json()["mask"]


def test_a_picked_seed_is_returned_and_replays_the_call(client):
    first = run(client, p=0.3, shape=[64])
    second = run(client, p=0.3, shape=[64])
    assert first["seed"] != second["seed"]
    assert 0 <= first["seed"] < 2**53  # safe for JavaScript clients

    replay = run(client, p=0.3, shape=[64], seed=first["seed"])
    assert replay["output"] == first["output"]


def test_concurrent_requests_keep_their_seeds(client):
    """Requests run in worker threads; torch's generator is process-wide, so they must queue."""
    requests = [{"p": 0.5, "shape": [128, 128], "seed": s, "return": ["mask"]} for s in range(16)]
    alone = [client.post(URL, json=r).content for r in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda r: client.post(URL, json=r).content, requests * 4))
    assert together == alone * 4


def test_the_service_does_not_disturb_the_callers_generator(client):
    torch.manual_seed(99)
    expected = torch.randn(3)
    torch.manual_seed(99)
    run(client, p=0.3, shape=[100], seed=1)
    assert torch.equal(torch.randn(3), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_deterministic_and_equals_torch_on_cuda(client):
    request = {"p": 0.3, "shape": [4, 256], "seed": 5, "device": "cuda"}
    first, second = run(client, **request), run(client, **request)
    assert first["device"].startswith("cuda")
    assert first["output"] == second["output"]

    torch.manual_seed(5)
    x = torch.randn(4, 256, device="cuda")
    assert torch.equal(t(first["output"]), torch.nn.Dropout(0.3)(x).cpu())


# --------------------------------------------------------------------------- in place, eval, p


def test_inplace_rewrites_the_input_and_not_inplace_leaves_it(client):
    tensors = {"return": ["input", "output", "input_after"]}
    kept = run(client, p=0.5, shape=[3, 4], seed=3, inplace=False, **tensors)
    rewritten = run(client, p=0.5, shape=[3, 4], seed=3, inplace=True, **tensors)

    assert kept["input_after"] == kept["input"] != kept["output"]
    assert rewritten["input_after"] == rewritten["output"] != rewritten["input"]
    assert rewritten["input"] == kept["input"]
    assert rewritten["output"] == kept["output"]


def test_eval_mode_is_the_identity(client):
    body = run(client, variant="Dropout", p=0.7, shape=[5, 5], seed=1, training=False)
    assert body["output"] == body["input"]
    assert np.all(np.array(body["mask"]) == 1)
    assert body["stats"]["kept_fraction"] == body["stats"]["expected_kept_fraction"] == 1.0


def test_p_zero_is_the_identity(client):
    body = run(client, p=0.0, shape=[5, 5], seed=1)
    assert body["output"] == body["input"]
    assert body["scale"] == 1.0
    assert body["stats"]["kept_fraction"] == 1.0


@pytest.mark.parametrize("variant", ["Dropout", "Dropout2d", "AlphaDropout"])
def test_p_one_zeroes_everything_and_has_no_scale(client, variant):
    body = run(client, variant=variant, p=1.0, shape=[2, 3, 4, 4], seed=1)
    assert np.all(np.float32(body["output"]) == 0)
    assert np.all(np.array(body["mask"]) == 0)
    assert body["scale"] is None
    assert body["stats"]["kept_fraction"] == body["stats"]["expected_kept_fraction"] == 0.0


# --------------------------------------------------------------------------- channel-wise


@pytest.mark.parametrize(
    ("variant", "shape", "spatial_dims"),
    [
        ("Dropout1d", [4, 16, 8], 1),
        ("Dropout2d", [4, 16, 3, 3], 2),
        ("Dropout2d", [16, 3, 3], 2),
        ("Dropout3d", [4, 16, 2, 2, 2], 3),
        ("FeatureAlphaDropout", [4, 16, 3, 3], 2),
    ],
)
def test_channel_wise_variants_drop_whole_channels(client, variant, shape, spatial_dims):
    body = run(client, variant=variant, p=0.5, shape=shape, distribution="ones", seed=4)
    channel_size = math.prod(shape[-spatial_dims:])
    mask = np.array(body["mask"]).reshape(-1, channel_size)  # one row per channel
    output = np.float32(body["output"]).reshape(-1, channel_size)

    assert np.all(mask.min(axis=1) == mask.max(axis=1))  # a channel is kept or dropped whole
    assert 0 < mask[:, 0].sum() < mask.shape[0]  # some channels kept, some dropped
    assert np.all(output.min(axis=1) == output.max(axis=1))  # a ones input stays flat per channel


def test_dropout2d_on_a_3d_input_says_how_it_was_read(client):
    body = run(client, variant="Dropout2d", p=0.5, shape=[8, 3, 3], seed=2)
    assert any("(C, H, W)" in w for w in body["warnings"])


# --------------------------------------------------------------------------- statistics


def test_kept_fraction_of_a_million_elements_is_within_half_a_percent(client):
    body = run(client, p=0.3, shape=[1000, 1000], seed=0, **{"return": []})
    stats = body["stats"]
    assert body["output"] is None and body["mask"] is None
    assert stats["expected_kept_fraction"] == pytest.approx(0.7)
    assert abs(stats["kept_fraction"] - 0.7) < 0.005


def test_alpha_dropout_keeps_mean_and_variance_of_a_standard_normal_input(client):
    """On 10^6 elements the standard errors are ~0.001; the tolerance is 0.01."""
    body = run(client, variant="AlphaDropout", p=0.2, shape=[1_000_000], seed=0, **{"return": []})
    stats = body["stats"]
    assert abs(stats["output_mean"] - 0.0) < 0.01
    assert abs(stats["output_std"] - 1.0) < 0.01

    plain = run(client, variant="Dropout", p=0.2, shape=[1_000_000], seed=0, **{"return": []})
    assert plain["stats"]["output_std"] == pytest.approx(1 / math.sqrt(0.8), abs=0.01)


def test_mean_over_samples_approaches_the_input_not_the_unscaled_expectation(client):
    one = run(client, p=0.3, shape=[200], seed=0, samples=1)["stats"]
    many = run(client, p=0.3, shape=[200], seed=0, samples=1000, **{"return": ["input"]})
    x = np.float32(many["input"])
    stats = many["stats"]

    assert stats["samples"] == 1000
    assert stats["sample_mean_abs_error"] < one["sample_mean_abs_error"] / 10
    assert stats["sample_mean_abs_error"] < 0.05
    unscaled_gap = float(np.mean(np.abs(x - x * (1 - 0.3))))  # the seed's x·(1-p)
    assert stats["sample_mean_abs_error"] < unscaled_gap / 5


def test_samples_are_one_batched_call_of_the_real_module(client):
    body = run(client, variant="Dropout2d", p=0.5, shape=[2, 3, 4, 4], seed=8, samples=5)
    torch.manual_seed(8)
    x = torch.randn(2, 3, 4, 4)
    reference = torch.nn.Dropout2d(0.5)(x.repeat(5, 1, 1, 1)).view(5, 2, 3, 4, 4)

    output = t(body["output"])
    assert output.shape == (5, 2, 3, 4, 4)
    assert torch.equal(output, reference)
    masks = np.array(body["mask"])
    assert any(not np.array_equal(masks[0], masks[k]) for k in range(1, 5))


# --------------------------------------------------------------------------- formats


def test_npy_returns_the_first_tensor_of_return(client):
    request = {"p": 0.3, "shape": [3, 4], "seed": 0, "return": ["mask", "output"]}
    as_json = run(client, **request)

    response = client.post(URL, params={"format": "npy"}, json=request)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-npy"
    assert response.headers["x-tensor"] == "mask"
    assert response.headers["x-seed"] == "0"
    mask = np.load(io.BytesIO(response.content))
    assert mask.dtype == np.uint8
    assert mask.tolist() == as_json["mask"]

    response = client.post(
        URL, headers={"accept": "application/x-npy"}, json={**request, "return": ["output"]}
    )
    output = np.load(io.BytesIO(response.content))
    assert output.dtype == np.float32
    assert np.array_equal(output, np.float32(as_json["output"]))


# --------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_p_outside_zero_one_is_refused(client, p):
    body = problem(client.post(URL, json={"p": p, "shape": [3]}), 422, "body.p")
    assert body["errors"][0]["loc"] == ["body", "p"]


def test_nan_is_refused_in_p_and_in_the_input(client):
    headers = {"content-type": "application/json"}
    problem(client.post(URL, content='{"p": NaN, "shape": [3]}', headers=headers), 422, "finite")
    body = problem(
        client.post(URL, content='{"input": [1.0, NaN]}', headers=headers), 422, "finite"
    )
    assert body["errors"][0]["loc"] == ["body", "input", 1]


def test_a_ragged_list_is_refused_where_it_is_ragged(client):
    body = problem(client.post(URL, json={"input": [[1, 2, 3], [4, 5]]}), 422, "ragged", "input[1]")
    assert body["errors"][0]["loc"] == ["body", "input", 1]
    problem(client.post(URL, json={"input": [[1, 2], 3]}), 422, "ragged")


def test_a_value_outside_float32_is_refused(client):
    body = problem(client.post(URL, json={"input": [1.0, 1e39]}), 422, "float32")
    assert body["errors"][0]["loc"] == ["body", "input", 1]


def test_an_integer_beyond_float64_is_refused_not_a_500(client):
    response = client.post(URL, json={"input": [[1, 2], [3, -(10**400)]]})
    body = problem(response, 422, "input[1][1]", "too large for float32")
    assert body["errors"][0]["loc"] == ["body", "input", 1, 1]


@pytest.mark.parametrize(
    ("variant", "shape", "wanted"),
    [
        ("Dropout1d", [4], "(C, L)"),
        ("Dropout2d", [3, 4], "(N, C, H, W)"),
        ("Dropout3d", [2, 3, 4, 4, 4, 4], "(N, C, D, H, W)"),
        ("FeatureAlphaDropout", [8], "at least 2 dims"),
    ],
)
def test_a_rank_the_variant_does_not_take_is_refused(client, variant, shape, wanted):
    response = client.post(URL, json={"variant": variant, "shape": shape})
    body = problem(response, 422, variant, wanted, f"{len(shape)} dim")
    assert body["errors"][0]["loc"] == ["body", "shape"]


def test_an_unknown_variant_is_refused_with_the_known_ones(client):
    response = client.post(URL, json={"variant": "Dropout4d", "shape": [3]})
    problem(response, 422, "variant", "Dropout2d", "FeatureAlphaDropout")


def test_input_and_shape_together_or_neither_are_refused(client):
    problem(client.post(URL, json={"input": [1], "shape": [1]}), 422, "exactly one")
    problem(client.post(URL, json={}), 422, "exactly one")
    problem(client.post(URL, json={"shape": [3], "sahpe": [3]}), 422, "sahpe")


def test_requests_over_the_limits_name_the_setting(client, settings: Settings):
    s = settings
    problem(
        client.post(URL, json={"shape": [s.dropout_max_elements + 1], "return": []}),
        422,
        "LRS_DROPOUT_MAX_ELEMENTS",
    )
    problem(
        client.post(URL, json={"shape": [1], "samples": s.dropout_max_samples + 1}),
        422,
        "LRS_DROPOUT_MAX_SAMPLES",
    )
    elements = s.dropout_max_total // s.dropout_max_samples + 1
    body = problem(
        client.post(URL, json={"shape": [elements], "samples": s.dropout_max_samples}),
        422,
        "LRS_DROPOUT_MAX_TOTAL",
    )
    assert body["type"].endswith("limit-exceeded")
    problem(
        client.post(URL, json={"shape": [s.dropout_json_max_values + 1], "return": ["output"]}),
        422,
        "LRS_DROPOUT_JSON_MAX_VALUES",
        "npy",
    )


def test_an_accept_header_we_cannot_serve_is_406(client):
    response = client.post(URL, json={"shape": [3]}, headers={"accept": "text/csv"})
    problem(response, 406, "application/x-npy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(client):
    problem(client.post(URL, json={"shape": [3], "device": "cuda"}), 422, "CUDA")


@pytest.mark.parametrize(
    "accept,media",
    [
        ("text/csv, application/json", "application/json"),
        ("text/csv;q=1, application/x-npy;q=0.5", "application/x-npy"),
        ("*/*", "application/json"),
    ],
)
def test_the_best_accept_type_we_serve_is_chosen(client, accept, media):
    response = client.post(URL, json={"shape": [3], "seed": 1}, headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)
