"""Ask the running server about one photo over gRPC: `python -m serving.grpc_client IMG` (make predict-grpc).

Uses the stubs `make grpc-stubs` generates from the installed TorchServe's own .proto files, and the
inference key from key_file.json, sent as `authorization: Bearer <key>` metadata (renewed through the
management API when TorchServe refuses it, as it does once the key expired).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc

from serving.config import MODEL_NAME, InferenceKey, ServeConfig, ServeError, parse_client_args
from serving.grpc_stubs import import_stubs


def predict_bytes(image: bytes, target: str, key: str, model: str = MODEL_NAME, timeout: float = 60.0) -> dict:
    """One Predictions RPC; returns the handler's JSON answer, raises grpc.RpcError on failure.

    TorchServe's gRPC API does not carry the handler's per-request status: an unusable image comes
    back as an OK RPC whose answer is the error JSON, {"error": ..., "status": 4xx}.
    """
    inference_pb2, inference_pb2_grpc, _, _ = import_stubs()
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        # The key name "data" is what the handler looks for first, as for an HTTP body.
        request = inference_pb2.PredictionsRequest(model_name=model, input={"data": image})
        response = stub.Predictions(request, timeout=timeout,
                                    metadata=[("authorization", f"Bearer {key}")])
    return json.loads(response.prediction)


def key_refused(answer: object) -> bool:
    """For InferenceKey.call: TorchServe fails a call whose key is missing, wrong or expired with PERMISSION_DENIED."""
    return isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.PERMISSION_DENIED


def main(argv: list[str] | None = None) -> int:
    args = parse_client_args(__doc__, argv)
    try:
        cfg = ServeConfig.load(args.config)
        image = Path(args.image).read_bytes()
        answer = InferenceKey.of_server(cfg, args.workdir).call(
            lambda key: predict_bytes(image, cfg.grpc_inference_target, key), key_refused)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            print("error: TorchServe's gRPC port is not answering: start it with `make serve`", file=sys.stderr)
            return 2
        print(f"{args.image}: gRPC {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(f"{args.image}: {json.dumps(answer)}")
    return 1 if "error" in answer else 0


if __name__ == "__main__":
    sys.exit(main())
