"""The bad-input matrix (bench/bad_inputs.py: CASES) against the session's real TorchServe, HTTP and gRPC.

Every case is sent at the same moment as two good photos: the case gets its expected answer (a
prediction, or a 4xx whose JSON names the problem, never 503 "Prediction failed"), the good photos are
answered correctly and the worker's pid does not change. `make bad-input-report` runs the same table
and writes reports/bad_inputs.{json,md}.
"""
import pytest

from bench import bad_inputs
from bench.bad_inputs import BY_NAME, CASES, Reference, run_case, transports
from bench.harness import worker_pids

PARAMS = [pytest.param(c.name, t, id=f"{c.name}-{t}") for c in CASES for t in transports(c)]


@pytest.fixture(scope="module")
def ref():
    return Reference()


@pytest.mark.parametrize("name,transport", PARAMS)
def test_case(torchserve, ref, name, transport):
    case = BY_NAME[name]
    result = run_case(torchserve, case, transport, ref, lambda: worker_pids(torchserve))
    assert result["ok"], result["problems"]
    assert result["worker_pid_unchanged"] and result["good_items_ok"]
    observed = result["observed"]
    if case.known_limit:
        # Pinned, so a TorchServe upgrade that changes it shows up here.
        assert observed["status"] == 500 and "ErrorDataDecoderException" in observed["error"], observed
        return
    if transport == "http" and case.expect == "refuse":
        assert 400 <= observed["status"] < 500 and observed["status"] != 503
    if case.reaches_handler and case.expect == "refuse":
        assert observed["status"] in (400, 413, 415) and observed["error"]
    if transport == "http" and case.reaches_handler:
        assert result["shared_batch"], "the case never shared a batch with the good photos"


def test_table_covers_the_issue():
    """Every input the issue names is in the table, with the right expectation."""
    must_answer = {"grayscale_jpeg", "cmyk_jpeg", "png_alpha", "palette_png", "png_16bit", "exif_rotated_jpeg",
                   "gif_animated", "bmp", "webp", "1x1", "panorama_4000x200", "photo_12mp",
                   "jpeg_as_text_plain", "jpeg_no_content_type"}
    must_refuse = {"empty", "plain_text", "html", "json_without_image", "truncated_jpeg", "random_bytes", "pdf",
                   "svg", "zip", "png_bomb_30000x30000", "over_max_request_size", "wrong_model_name",
                   "wrong_method_get", "heic"}
    assert {n for n in must_answer if BY_NAME[n].expect == "answer"} == must_answer
    assert {n for n in must_refuse if BY_NAME[n].expect == "refuse"} == must_refuse
    assert len(bad_inputs.png_bomb()) < 200_000  # a small file that decodes to 900 MP
    assert len(BY_NAME["over_max_request_size"].make()) > bad_inputs.MAX_REQUEST_SIZE


def test_max_request_size_matches_the_config():
    from serving.config import ServeConfig

    assert int(ServeConfig.load().props["max_request_size"]) == bad_inputs.MAX_REQUEST_SIZE
