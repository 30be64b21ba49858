"""A new user's first look at the coordinator: list its services through gRPC
reflection with Python's grpcio-reflection (which speaks grpc.reflection.v1alpha
only), then call ChaosService.ListNodes with messages built from the reflected
descriptors alone. Prints one JSON line; exits non-zero on any failure.

usage: reflect.py ADDRESS CA_PEM SERVER_NAME TOKEN
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

address, ca, server_name, token = sys.argv[1:5]
creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
channel = grpc.secure_channel(
    address, creds, options=[("grpc.ssl_target_name_override", server_name)]
)
db = ProtoReflectionDescriptorDatabase(channel)
services = sorted(db.get_services())
pool = descriptor_pool.DescriptorPool(db)
method = pool.FindServiceByName("faultline.v1.ChaosService").FindMethodByName("ListNodes")
request = message_factory.GetMessageClass(method.input_type)
response = message_factory.GetMessageClass(method.output_type)
list_nodes = channel.unary_unary(
    "/faultline.v1.ChaosService/ListNodes",
    request_serializer=request.SerializeToString,
    response_deserializer=response.FromString,
)
reply = list_nodes(request(), metadata=[("authorization", "Bearer " + token)], timeout=10)
# grpc.reflection.v1 has the same messages as v1alpha under another name: ask it too,
# as grpcurl would.
v1 = channel.stream_stream(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
)
answer = next(iter(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
v1_services = sorted(s.name for s in answer.list_services_response.service)
print(json.dumps({"services": services, "v1_services": v1_services, "nodes": [n.name for n in reply.nodes],
                  "connected": [n.connected for n in reply.nodes]}))
