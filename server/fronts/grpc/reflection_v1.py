"""Server reflection as `grpc.reflection.v1` beside grpcio-reflection's `v1alpha`.

grpcurl and newer tools ask for v1 first; grpcio-reflection ships only v1alpha. The two protocols are
the same messages with the same field numbers under another package name, so v1 is served by the
v1alpha implementation over the wire format, and the v1 file descriptor (the v1alpha one renamed) is
added to the descriptor pool so that the v1 service itself can be described. `merged_pool` gives both
reflection services one pool holding the default pool's services and the Open Inference Protocol's,
whose stubs keep a pool of their own (server/proto_gen/inference).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import _async, reflection_pb2

from server.proto_gen.inference import POOL as INFERENCE_POOL

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(".grpc.reflection.v1alpha."):
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.", 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.", 1)
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.", 1)
    proto.options.Clear()
    pool.Add(proto)


def merged_pool(service_names: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A pool with the file of every named service and the files they import, from the default pool
    or the Open Inference Protocol's; a name found in neither is left out."""
    _register_v1_descriptor()
    merged = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        merged.Add(proto)
        added.add(file.name)

    for name in service_names:
        for pool in (descriptor_pool.Default(), INFERENCE_POOL):
            try:
                add(pool.FindServiceByName(name).file)
                break
            except KeyError:
                continue
    return merged


def enable_server_reflection(
    service_names: Sequence[str],
    server: grpc.aio.Server,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> None:
    """Serve grpc.reflection.v1 on `server`, listing `service_names` described from `pool` (the
    default pool if None)."""
    _register_v1_descriptor()
    servicer = _async.ReflectionServicer(service_names, pool=pool)

    async def info(
        requests: AsyncIterator[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in servicer.ServerReflectionInfo(requests, context):
            yield response

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                info,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
