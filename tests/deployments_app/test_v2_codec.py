"""The V2 (Open Inference Protocol) codec against the bytes tritonclient itself sends and reads.

Pure unit tests: requests are built with `tritonclient.http` exactly as `client.infer` builds
them (binary and JSON modes, gzip/deflate), answers are read back with its `InferResult`.
"""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from http import HTTPStatus

import numpy as np
import pytest
import tritonclient.http as httpclient

from deployments_app.predict.inputs import InputError
from deployments_app.predict.protocols import v2
from deployments_app.predict.protocols.encoding import EncodingError, decode_content

MAX = 1024 * 1024
IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
IRIS = {
    "n_features": 4,
    "columns": IRIS_COLUMNS,
    "column_types": dict.fromkeys(IRIS_COLUMNS, "number"),
    "has_predict_proba": True,
    "classes": [0, 1, 2],
}
HOUSE = {"n_features": 3, "columns": None, "column_types": None, "has_predict_proba": False}
SPAM = {
    "n_features": None,
    "columns": None,
    "column_types": None,
    "text_input": True,
    "has_predict_proba": True,
    "classes": ["ham", "spam"],
}
FLATS = {
    "n_features": 2,
    "columns": ["city", "rooms"],
    "column_types": {"city": "string", "rooms": "number"},
    "has_predict_proba": False,
}


def tensor(name, array, *, binary=True):
    t = httpclient.InferInput(name, list(array.shape), _triton_type(array))
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def _triton_type(array):
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def request(inputs, outputs=None, *, request_id="", parameters=None, compression=None):
    """(body, lower-case headers) as InferenceServerClient.infer sends them."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters
    )
    headers = {}
    if compression == "gzip":
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    elif compression == "deflate":
        body, headers["content-encoding"] = zlib.compress(body), "deflate"
    if json_size is not None:
        headers["inference-header-content-length"] = str(json_size)
    return body, headers


def answer(body, headers):
    assert set(headers) <= {"Content-Type", "Inference-Header-Content-Length"}
    return httpclient.InferResult.from_response_body(
        body, False, headers.get("Inference-Header-Content-Length"), content_encoding=None
    )


def raw_request(doc, binary=b""):
    header = json.dumps(doc).encode()
    if not binary:
        return header, {}
    return header + binary, {"inference-header-content-length": str(len(header))}


def status_of(body, headers, schema=HOUSE, max_bytes=MAX):
    with pytest.raises(InputError) as exc:
        v2.parse_infer(body, headers, schema, max_bytes=max_bytes)
    return exc.value.status, exc.value.body["error"]


# --------------------------------------------------------------------------- round trips


def test_binary_fp64_matrix_becomes_rows_and_all_outputs_come_back_binary():
    x = np.array([[1500.0, 3.0, 2.0], [2500.5, 4.0, 3.0]])
    body, headers = request([tensor("input-0", x)])
    assert "inference-header-content-length" in headers  # tritonclient's default mode

    parsed = v2.parse_infer(body, headers, HOUSE, max_bytes=MAX)

    assert parsed.rows == [[1500.0, 3.0, 2.0], [2500.5, 4.0, 3.0]]
    assert parsed.outputs == [] and parsed.binary_default is True and parsed.proba is False
    out, out_headers = v2.render_infer("house", "2", "req-1", parsed, {"predictions": [1.25, 2.5]})
    assert out_headers["Content-Type"] == "application/octet-stream"
    result = answer(out, out_headers)
    predict = result.as_numpy("predict")
    assert predict.dtype == np.float64
    np.testing.assert_array_equal(predict, [1.25, 2.5])
    assert result.get_output("predict")["parameters"] == {"binary_data_size": 16}
    assert result.get_response()["model_name"] == "house"
    assert result.get_response()["model_version"] == "2"


def test_json_fp32_request_and_json_answer_have_no_framing_header():
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=False)]
    body, headers = request([tensor("input-0", x, binary=False)], outputs)
    assert headers == {}  # JSON mode: the whole body is the header

    parsed = v2.parse_infer(body, headers, IRIS, max_bytes=MAX)

    assert parsed.rows == x.tolist()  # the float32 values, as Python floats
    assert parsed.outputs == [("predict", False)] and parsed.proba is False
    out, out_headers = v2.render_infer("iris", "1", "r", parsed, {"predictions": [0, 2]})
    assert out_headers == {"Content-Type": "application/json"}
    result = answer(out, out_headers)
    np.testing.assert_array_equal(result.as_numpy("predict"), np.array([0, 2], dtype=np.int64))
    assert result.get_output("predict")["datatype"] == "INT64"
    assert result.as_numpy("predict_proba") is None  # not requested


def test_binary_int64_values_arrive_as_python_ints():
    x = np.array([[1, 2, 3], [-4, 5, 2**40]], dtype=np.int64)
    parsed = v2.parse_infer(*request([tensor("x", x)]), HOUSE, max_bytes=MAX)
    assert parsed.rows == [[1, 2, 3], [-4, 5, 2**40]]
    assert all(type(v) is int for row in parsed.rows for v in row)


def test_binary_fp16_and_uint8_are_decoded_little_endian():
    half = np.array([[0.5, -2.0, 65504.0]], dtype=np.float16)
    assert v2.parse_infer(*request([tensor("x", half)]), HOUSE, max_bytes=MAX).rows == [
        [0.5, -2.0, 65504.0]
    ]
    octets = np.array([[0, 7, 255]], dtype=np.uint8)
    assert v2.parse_infer(*request([tensor("x", octets)]), HOUSE, max_bytes=MAX).rows == [
        [0, 7, 255]
    ]


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_text_tensor_feeds_a_text_model(binary):
    texts = np.array(["WIN money now", "héllo, lunch at 12?"], dtype=np.object_)
    body, headers = request([tensor("input-0", texts, binary=binary)], request_id="t-1")

    parsed = v2.parse_infer(body, headers, SPAM, max_bytes=MAX)

    assert parsed.rows == [["WIN money now"], ["héllo, lunch at 12?"]]
    assert parsed.proba is True  # no outputs named: every output the model has
    upstream = {
        "predictions": ["spam", "ham"],
        "probabilities": [[0.1, 0.9], [0.8, 0.2]],
        "classes": ["ham", "spam"],
    }
    result = answer(*v2.render_infer("spam", "3", "r", parsed, upstream))
    assert result.as_numpy("predict").tolist() == [b"spam", b"ham"]  # binary BYTES: bytes
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), [[0.1, 0.9], [0.8, 0.2]])
    assert result.get_response()["id"] == "t-1"


def test_bytes_output_in_json_mode_reads_back_as_text():
    texts = np.array([["free prize"]], dtype=np.object_)  # [N, 1] works for text too
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=False)]
    parsed = v2.parse_infer(*request([tensor("input-0", texts)], outputs), SPAM, max_bytes=MAX)
    assert parsed.rows == [["free prize"]] and parsed.proba is False
    result = answer(*v2.render_infer("spam", "3", "r", parsed, {"predictions": ["spam"]}))
    assert result.as_numpy("predict").tolist() == ["spam"]
    assert result.get_output("predict")["datatype"] == "BYTES"


def test_one_tensor_per_named_column_mixing_binary_and_json_inputs():
    city = np.array([["Paris"], ["Lyon"]], dtype=np.object_)
    rooms = np.array([3.0, 5.0])
    # rooms first in the request: rows still follow the model's column order
    body, headers = request([tensor("rooms", rooms, binary=False), tensor("city", city)])

    parsed = v2.parse_infer(body, headers, FLATS, max_bytes=MAX)

    assert parsed.rows == [["Paris", 3.0], ["Lyon", 5.0]]
    assert parsed.payload["inputs"] == [
        {"name": "rooms", "shape": [2], "datatype": "FP64", "data": [3.0, 5.0]},
        {"name": "city", "shape": [2, 1], "datatype": "BYTES", "data": ["Paris", "Lyon"]},
    ]


def test_iris_columns_as_separate_binary_tensors():
    data = np.array([[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2]])
    inputs = [tensor(c, data[:, i].copy()) for i, c in enumerate(IRIS_COLUMNS)]
    parsed = v2.parse_infer(*request(inputs), IRIS, max_bytes=MAX)
    assert parsed.rows == data.tolist()


def test_several_outputs_binary_and_json_mixed_in_request_order():
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])
    outputs = [
        httpclient.InferRequestedOutput("predict_proba", binary_data=True),
        httpclient.InferRequestedOutput("predict", binary_data=False),
    ]
    parsed = v2.parse_infer(*request([tensor("input-0", x)], outputs), IRIS, max_bytes=MAX)
    assert parsed.outputs == [("predict_proba", True), ("predict", False)]
    assert parsed.proba is True
    proba = [[1.0, 0.0, 0.0], [0.0, 0.1, 0.9], [0.0, 0.7, 0.3]]

    body, headers = v2.render_infer(
        "iris", "1", "r", parsed, {"predictions": [0, 2, 1], "probabilities": proba}
    )

    result = answer(body, headers)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict_proba", "predict"]
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), proba)
    assert result.as_numpy("predict_proba").shape == (3, 3)
    np.testing.assert_array_equal(result.as_numpy("predict"), [0, 2, 1])
    assert "data" in result.get_output("predict")
    assert int(headers["Inference-Header-Content-Length"]) == len(body) - 3 * 3 * 8


def test_two_binary_outputs_are_laid_out_one_after_the_other():
    x = np.array([[5.1, 3.5, 1.4, 0.2]])
    outputs = [
        httpclient.InferRequestedOutput("predict"),
        httpclient.InferRequestedOutput("predict_proba"),
    ]
    parsed = v2.parse_infer(*request([tensor("input-0", x)], outputs), IRIS, max_bytes=MAX)
    result = answer(
        *v2.render_infer(
            "iris", "1", "r", parsed, {"predictions": [1], "probabilities": [[0.2, 0.5, 0.3]]}
        )
    )
    np.testing.assert_array_equal(result.as_numpy("predict"), [1])
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), [[0.2, 0.5, 0.3]])


def test_binary_data_output_parameter_applies_to_all_outputs_in_json_requests():
    doc = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
        "parameters": {"binary_data_output": True},
    }
    parsed = v2.parse_infer(*raw_request(doc), IRIS, max_bytes=MAX)
    body, headers = v2.render_infer(
        "iris", "1", "r", parsed, {"predictions": [True], "probabilities": [[0.5, 0.5, 0.0]]}
    )
    result = answer(body, headers)
    for output in result.get_response()["outputs"]:
        assert "data" not in output and output["parameters"]["binary_data_size"] > 0
    assert result.as_numpy("predict").tolist() == [True]
    assert result.get_output("predict")["datatype"] == "BOOL"
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), [[0.5, 0.5, 0.0]])


def test_json_data_may_be_nested_or_flat():
    nested = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], [4, 5, 6]]}
        ]
    }
    flat = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]
    }
    for doc in (nested, flat):
        assert v2.parse_infer(*raw_request(doc), HOUSE, max_bytes=MAX).rows == [
            [1, 2, 3],
            [4, 5, 6],
        ]


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests_as_tritonclient_sends_them(compression):
    x = np.array([[1.0, 2.0, 3.0]] * 50)
    body, headers = request([tensor("input-0", x)], compression=compression)
    assert headers["content-encoding"] == compression
    assert v2.parse_infer(body, headers, HOUSE, max_bytes=MAX).rows == x.tolist()


def test_header_names_are_matched_in_any_case():
    x = np.array([[1.0, 2.0, 3.0]])
    body, headers = request([tensor("x", x)], compression="gzip")
    title = {"-".join(p.capitalize() for p in k.split("-")): v for k, v in headers.items()}
    assert "Inference-Header-Content-Length" in title
    assert v2.parse_infer(body, title, HOUSE, max_bytes=MAX).rows == [[1.0, 2.0, 3.0]]


def test_request_id_is_echoed_and_the_portal_id_is_the_fallback():
    x = np.array([[1.0, 2.0, 3.0]])
    parsed = v2.parse_infer(
        *request([tensor("x", x)], request_id="client-42"), HOUSE, max_bytes=MAX
    )
    assert parsed.id == "client-42"
    body, headers = v2.render_infer("h", "1", "portal-id", parsed, {"predictions": [1.0]})
    assert answer(body, headers).get_response()["id"] == "client-42"

    parsed = v2.parse_infer(*request([tensor("x", x)]), HOUSE, max_bytes=MAX)
    body, headers = v2.render_infer("h", "1", "portal-id", parsed, {"predictions": [1.0]})
    assert answer(body, headers).get_response()["id"] == "portal-id"


def test_payload_records_the_decoded_binary_values():
    x = np.array([[1.5, 2.0, 3.0]])
    parsed = v2.parse_infer(*request([tensor("input-0", x)], request_id="p"), HOUSE, max_bytes=MAX)
    assert parsed.payload["id"] == "p"
    assert parsed.payload["inputs"] == [
        {"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1.5, 2.0, 3.0]}
    ]
    assert parsed.payload["parameters"] == {"binary_data_output": True}
    json.dumps(parsed.payload)  # ready for the log's jsonb column


# --------------------------------------------------------------------------- refusals


def test_binary_part_longer_than_the_sizes_is_refused():
    body, headers = request([tensor("x", np.array([[1.0, 2.0, 3.0]]))])
    status, error = status_of(body + b"\0", headers)
    assert status == HTTPStatus.BAD_REQUEST and "add up to 24" in error


def test_binary_part_shorter_than_the_sizes_is_refused():
    body, headers = request([tensor("x", np.array([[1.0, 2.0, 3.0]]))])
    status, error = status_of(body[:-1], headers)
    assert status == HTTPStatus.BAD_REQUEST and "runs past the end" in error


def test_binary_size_not_matching_the_shape_is_refused():
    doc = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 3],
                "datatype": "FP64",
                "parameters": {"binary_data_size": 16},
            }
        ]
    }
    status, error = status_of(*raw_request(doc, np.array([1.0, 2.0]).tobytes()))
    assert status == HTTPStatus.BAD_REQUEST and "take 24 bytes" in error


def test_element_count_must_match_the_shape():
    doc = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5]}]}
    status, error = status_of(*raw_request(doc))
    assert status == HTTPStatus.BAD_REQUEST and "holds 6 values, got 5" in error


def test_bytes_element_count_must_match_the_shape():
    texts = np.array(["a", "b", "c"], dtype=np.object_)
    body, headers = request([tensor("x", texts)])
    tampered = body.replace(b'"shape":[3]', b'"shape":[2]')  # same length: framing holds
    assert tampered != body
    status, error = status_of(tampered, headers, SPAM)
    assert status == HTTPStatus.BAD_REQUEST and "holds 2 values, got 3" in error


@pytest.mark.parametrize("datatype", ["FP8", "BF16", "float64", None])
def test_unknown_datatype_is_refused(datatype):
    doc = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": datatype, "data": [1, 2, 3]}]}
    status, error = status_of(*raw_request(doc))
    assert status == HTTPStatus.BAD_REQUEST and "unsupported datatype" in error and "FP64" in error


def test_json_data_must_fit_the_datatype():
    doc = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 256]}]}
    status, error = status_of(*raw_request(doc))
    assert status == HTTPStatus.BAD_REQUEST and "integers in [0, 255]" in error


def test_unknown_output_is_refused_naming_the_known_ones():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    outputs = [httpclient.InferRequestedOutput("scores")]
    status, error = status_of(*request([tensor("x", x)], outputs), IRIS)
    assert status == HTTPStatus.BAD_REQUEST
    assert error == "unknown output 'scores'; this model has: predict, predict_proba"


def test_predict_proba_is_unknown_for_a_model_without_it():
    x = np.array([[1.0, 2.0, 3.0]])
    outputs = [httpclient.InferRequestedOutput("predict_proba")]
    status, error = status_of(*request([tensor("x", x)], outputs), HOUSE)
    assert status == HTTPStatus.BAD_REQUEST and error.endswith("this model has: predict")


@pytest.mark.parametrize("value", ["abc", "-1", "", "1e3", "0", "999999"])
def test_bad_inference_header_content_length_is_refused(value):
    body, headers = request([tensor("x", np.array([[1.0, 2.0, 3.0]]))])
    headers["inference-header-content-length"] = value
    status, error = status_of(body, headers)
    assert status == HTTPStatus.BAD_REQUEST and "Inference-Header-Content-Length" in error


def test_header_length_cutting_the_json_short_is_refused():
    body, headers = request([tensor("x", np.array([[1.0, 2.0, 3.0]]))])
    headers["inference-header-content-length"] = str(
        int(headers["inference-header-content-length"]) - 5
    )
    status, error = status_of(body, headers)
    assert status == HTTPStatus.BAD_REQUEST and "not valid JSON" in error


def test_invalid_utf8_in_a_binary_bytes_tensor_is_refused():
    texts = np.array([b"ok", b"\xff\xfe bad"], dtype=np.object_)
    status, error = status_of(*request([tensor("input-0", texts)]), SPAM)
    assert status == HTTPStatus.BAD_REQUEST and "element 1 is not UTF-8" in error


def test_truncated_bytes_element_is_refused():
    doc = {
        "inputs": [
            {"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}
        ]
    }
    status, error = status_of(*raw_request(doc, b"\x05\0\0\0ab"), SPAM)
    assert status == HTTPStatus.BAD_REQUEST and "runs past its data" in error


def test_wrong_feature_count_is_the_schema_check_422():
    x = np.array([[1.0, 2.0]])
    status, error = status_of(*request([tensor("x", x)]), HOUSE)
    assert status == HTTPStatus.UNPROCESSABLE_ENTITY and error == "expected 3 features, got 2"


def test_missing_column_tensor_is_named():
    rooms = np.array([3.0])
    with pytest.raises(InputError) as exc:
        v2.parse_infer(
            *request([tensor("rooms", rooms), tensor("floor", rooms)]), FLATS, max_bytes=MAX
        )
    assert exc.value.status == HTTPStatus.UNPROCESSABLE_ENTITY
    assert exc.value.body == {"error": "missing input tensor(s): city", "field": "city"}


def test_text_in_a_numeric_model_is_refused():
    texts = np.array([["a", "b", "c"]], dtype=np.object_)
    status, _ = status_of(*request([tensor("x", texts)]), HOUSE)
    assert status == HTTPStatus.UNPROCESSABLE_ENTITY


def _bomb(wbits: int, gigabytes: int = 1) -> bytes:
    """`gigabytes` of zeros as one deflate stream, made in milliseconds: after a full flush
    the compressor starts afresh, so every further megabyte compresses to the same bytes
    (no trailer: a bounded decoder stops long before it)."""
    mb = bytes(1 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = deflater.compress(mb) + deflater.flush(zlib.Z_FULL_FLUSH)
    again = deflater.compress(mb) + deflater.flush(zlib.Z_FULL_FLUSH)
    return first + again * (1024 * gigabytes - 1)


@pytest.mark.parametrize(("coding", "wbits"), [("gzip", 31), ("deflate", 15), ("deflate", -15)])
def test_a_compression_bomb_fails_fast_with_413_in_bounded_memory(coding, wbits):
    bomb = _bomb(wbits)
    assert len(bomb) < 8 * MAX  # a gigabyte inside
    tracemalloc.start()
    started = time.perf_counter()
    try:
        status, error = status_of(bomb, {"content-encoding": coding})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and "larger than" in error
    assert time.perf_counter() - started < 2
    assert peak < len(bomb) + 4 * MAX


def test_corrupt_gzip_is_a_400():
    body = gzip.compress(b'{"inputs": []}')
    with pytest.raises(EncodingError) as exc:
        decode_content(body[:10] + b"garbage!" + body[18:], "gzip", MAX)
    assert exc.value.status == HTTPStatus.BAD_REQUEST


def test_truncated_gzip_is_a_400():
    with pytest.raises(EncodingError) as exc:
        decode_content(gzip.compress(b"x" * 1000)[:-12], "gzip", MAX)
    assert exc.value.status == HTTPStatus.BAD_REQUEST and "truncated" in exc.value.message


def test_unsupported_content_encoding_names_the_accepted_ones():
    status, error = status_of(b"{}", {"content-encoding": "br"})
    assert status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert "'br'" in error and "gzip" in error and "deflate" in error


def test_decode_content_accepts_identity_zlib_raw_deflate_and_gzip_members():
    data = b'{"inputs": [1, 2, 3]}' * 10
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw_deflate = raw.compress(data) + raw.flush()
    assert decode_content(data, "", MAX) == data
    assert decode_content(data, "identity", MAX) == data
    assert decode_content(zlib.compress(data), "deflate", MAX) == data
    assert decode_content(raw_deflate, "Deflate", MAX) == data
    assert decode_content(gzip.compress(data) + gzip.compress(data), "gzip", MAX) == data * 2


def test_decode_content_limit_is_exact():
    data = bytes(1000)
    assert decode_content(gzip.compress(data), "gzip", 1000) == data
    with pytest.raises(EncodingError) as exc:
        decode_content(gzip.compress(data), "gzip", 999)
    assert exc.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    with pytest.raises(EncodingError) as exc:
        decode_content(data, "identity", 999)
    assert exc.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


# --------------------------------------------------------------------------- metadata


def test_model_metadata_lists_column_tensors_and_typed_outputs():
    meta = v2.model_metadata("iris", ["1"], IRIS)
    assert meta["platform"] == "sklearn" and meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == IRIS_COLUMNS
    assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]


def test_model_metadata_for_positional_text_and_string_column_models():
    assert v2.model_metadata("h", ["2"], HOUSE)["inputs"] == [
        {"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}
    ]
    spam = v2.model_metadata("s", ["1"], SPAM)
    assert spam["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]
    assert spam["outputs"][0]["datatype"] == "BYTES"
    flats = v2.model_metadata("f", ["1"], FLATS)
    assert [(i["name"], i["datatype"]) for i in flats["inputs"]] == [
        ("city", "BYTES"),
        ("rooms", "FP64"),
    ]
    assert [o["name"] for o in flats["outputs"]] == ["predict"]


def test_server_metadata_and_error_body():
    meta = v2.server_metadata("1.4.0")
    assert meta == {
        "name": "model-portal",
        "version": "1.4.0",
        "extensions": ["binary_tensor_data"],
    }
    assert json.loads(v2.error_body("no deployment named 'x'")) == {
        "error": "no deployment named 'x'"
    }
