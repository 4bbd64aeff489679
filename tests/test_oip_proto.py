"""proto/inference/grpc_service.proto speaks the published Open Inference Protocol: every message,
field, enum and method it declares matches tritonclient's compiled descriptors, number for number."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

from server.proto_gen.inference import grpc_service_pb2 as ours_pb2


def _file(module) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def _messages(files) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message, nested ones included, by full name (".inference.X.Y")."""
    found = {}

    def walk(prefix: str, messages) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            found[name] = message
            walk(name, message.nested_type)

    for file in files:
        walk(f".{file.package}", file.message_type)
    return found


OURS = _file(ours_pb2)
PUBLISHED = [_file(service_pb2), _file(model_config_pb2)]
OUR_MESSAGES = _messages([OURS])
PUBLISHED_MESSAGES = _messages(PUBLISHED)


def _field_facts(
    message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
):
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (field.name, field.type, field.label, field.type_name, oneof)


def test_the_package_and_service_are_the_published_ones():
    assert OURS.package == "inference"
    assert [s.name for s in OURS.service] == ["GRPCInferenceService"]


@pytest.mark.parametrize("name", sorted(OUR_MESSAGES))
def test_each_message_matches_the_published_one_field_by_field(name):
    ours, published = OUR_MESSAGES[name], PUBLISHED_MESSAGES.get(name)
    assert published is not None, f"{name} is not in tritonclient's protos"
    theirs = {f.number: _field_facts(published, f) for f in published.field}
    for field in ours.field:
        assert theirs.get(field.number) == _field_facts(ours, field), f"{name}.{field.name}"


def test_each_method_matches_the_published_one():
    published = {
        m.name: m for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    }
    for method in OURS.service[0].method:
        theirs = published[method.name]
        assert (method.input_type, method.output_type) == (
            f".{theirs.input_type.full_name}",
            f".{theirs.output_type.full_name}",
        )
        assert not method.client_streaming and not method.server_streaming


def test_the_datatype_enum_matches_the_published_one():
    (ours,) = [e for e in OURS.enum_type if e.name == "DataType"]
    (theirs,) = [e for e in PUBLISHED[1].enum_type if e.name == "DataType"]
    assert [(v.name, v.number) for v in ours.value] == [(v.name, v.number) for v in theirs.value]


def test_a_message_written_by_tritonclient_reads_back_the_same():
    request = service_pb2.ModelInferRequest(model_name="m-decoder", model_version="2", id="x")
    tensor = request.inputs.add(name="latent", datatype="FP32", shape=[1, 2])
    tensor.parameters["p"].bool_param = True
    request.raw_input_contents.append(b"\0" * 8)
    request.outputs.add(name="image")
    ours = ours_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert ours.SerializeToString(deterministic=True) == request.SerializeToString(
        deterministic=True
    )
    assert (ours.inputs[0].name, list(ours.inputs[0].shape), ours.outputs[0].name) == (
        "latent",
        [1, 2],
        "image",
    )
