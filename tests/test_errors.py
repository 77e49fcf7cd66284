"""The error model (service.pipeline.errors): every typed error has its answer on every protocol."""

import orjson
import pytest

from service.pipeline import errors
from service.protocols import oip, rest, websocket

CASES: list[tuple[errors.ServiceError, int, int, int]] = [  # error, REST status, /v2 status, close code
    (errors.InvalidInput([errors.error(("body", "inputs", 0), "bad", "t")]), 422, 400, 1007),
    (errors.PayloadTooLarge(10, 5), 413, 413, 1009),
    (errors.BodyTimeout("slow"), 408, 408, 1008),
    (errors.Overloaded("full"), 503, 503, 1013),
    (errors.NotReady(), 503, 503, 1013),
    (errors.StoreDown("down"), 503, 503, 1013),
    (errors.SequenceBusy("busy"), 409, 409, 1013),
    (errors.ChunkOutOfOrder([errors.error(("body", "inputs", 0), "bad", "t")]), 409, 409, 1007),
    (errors.SequencesFull("full"), 429, 429, 1013),
    (errors.DeadlineExceeded("late"), 504, 504, 1013),
    (errors.UnknownModel("nope"), 404, 404, 1008),
    (errors.TooManySequences("many"), 429, 429, 1008),
    (errors.ModelControlOff("none"), 400, 400, 1008),
    (errors.LoadFailed("corrupt"), 400, 400, 1008),
    (errors.ModelInUse("default"), 409, 409, 1008),
    (errors.ControlIncomplete("behind"), 503, 503, 1013),
]


def test_every_error_type_is_covered() -> None:
    def every(kind: type) -> set[type]:
        return {kind, *(k for sub in kind.__subclasses__() for k in every(sub))}

    covered = {type(e) for e, *_ in CASES} | {errors.ClientDisconnected}  # nobody is left to answer that one
    assert covered == every(errors.ServiceError) - {errors.ServiceError} == set(websocket.CLOSE_CODES)


@pytest.mark.parametrize(("exc", "rest_status", "oip_status", "close"), CASES, ids=lambda v: type(v).__name__)
def test_each_protocol_maps_each_error_once(
    exc: errors.ServiceError, rest_status: int, oip_status: int, close: int
) -> None:
    status, body, headers = rest.error_response(exc)
    assert status == rest_status and body["detail"]
    status, raw, oip_headers = oip.error_response(exc)
    assert status == oip_status and orjson.loads(raw)["error"]
    assert headers == oip_headers == exc.headers
    closing = websocket.close_for(exc)
    assert closing.code == close and closing.reason
    if isinstance(exc, errors.InvalidInput):
        assert body["detail"][0]["loc"] == ["body", "inputs", 0]
        assert orjson.loads(raw)["error"] == "inputs.0: bad" == closing.reason
