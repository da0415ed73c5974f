"""A CRI client: the image calls the kubelet makes to containerd, over containerd's gRPC socket.

The stubs are generated from tests/proto/cri_api.proto (CRI v1, vendored from kubernetes/cri-api)
by grpcio-tools the first time they are needed, into a temporary directory that is removed once
they are imported. Nothing generated is committed: generated protobuf modules refuse to run on a
protobuf runtime older than the generator, and grpcio-tools brings the protobuf it generates for.

grpcio's client is synchronous: each call runs in a worker thread and carries a gRPC deadline,
so the thread ends by itself when the test is cancelled.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import trio

PROTO = Path(__file__).resolve().parent / "proto" / "cri_api.proto"
CALL_TIMEOUT = 60.0  # a gRPC deadline per call: PullImage of a few MiB on loopback takes < 5 s
READY_TIMEOUT = 30.0


@functools.cache
def stubs() -> tuple[ModuleType, ModuleType]:
    """``(cri_api_pb2, cri_api_pb2_grpc)``, generated and imported once per process."""
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="p2p-cri-stubs-"))
    try:
        argv = ["protoc", f"-I{PROTO.parent}", f"--python_out={out}", f"--grpc_python_out={out}"]
        if protoc.main([*argv, PROTO.name]) != 0:
            raise RuntimeError(f"grpcio-tools could not compile {PROTO}")
        modules = []
        for name in (f"{PROTO.stem}_pb2", f"{PROTO.stem}_pb2_grpc"):
            spec = importlib.util.spec_from_file_location(name, out / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # the _grpc module imports the _pb2 one by name
            spec.loader.exec_module(module)
            modules.append(module)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return modules[0], modules[1]


class CriClient:
    """The kubelet's side of containerd's CRI image service (``runtime.v1``).

    Use as a context manager (the channel is closed at the end). Responses are the generated
    protobuf messages: ``Image`` has ``id``, ``repo_tags``, ``repo_digests`` and ``size``.
    """

    def __init__(self, address: str) -> None:
        self.pb, grpc_stubs = stubs()
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self._runtime = grpc_stubs.RuntimeServiceStub(self._channel)
        self._images = grpc_stubs.ImageServiceStub(self._channel)

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._channel.close()

    async def _call(self, method: Any, request: Any, *, grpc_timeout: float = CALL_TIMEOUT) -> Any:
        call = functools.partial(method, request, timeout=grpc_timeout)
        return await trio.to_thread.run_sync(call)

    async def wait_ready(self) -> str:
        """Wait until the CRI plugin answers image calls; returns the runtime's version."""
        probe = self.pb.ListImagesRequest()
        with trio.fail_after(READY_TIMEOUT):
            while True:
                try:
                    await self._call(self._images.ListImages, probe, grpc_timeout=5)
                    break
                except grpc.RpcError:
                    await trio.sleep(0.1)  # the plugin initialises after the socket is up
        answer = await self._call(self._runtime.Version, self.pb.VersionRequest())
        return f"{answer.runtime_name} {answer.runtime_version} (CRI {answer.runtime_api_version})"

    async def pull_image(self, ref: str) -> str:
        """``PullImage`` as the kubelet sends it (no credentials); returns the image ref."""
        request = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=ref))
        response = await self._call(self._images.PullImage, request)
        return str(response.image_ref)

    async def list_images(self) -> list[Any]:
        response = await self._call(self._images.ListImages, self.pb.ListImagesRequest())
        return list(response.images)

    async def image_status(self, ref: str) -> Any | None:
        """The image's status, or None when containerd does not have it."""
        request = self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=ref))
        response = await self._call(self._images.ImageStatus, request)
        return response.image if response.HasField("image") else None
