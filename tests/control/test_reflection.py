"""An admin call driven by reflection alone, with JSON in and out — what `grpcurl` does: list the
services, describe a method, and invoke it, without any of our generated code on the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from control import ControlServer
from tests.control.support import ADMIN_TOKEN


class Grpcurl:
    """The client side of `grpcurl -plaintext [-H authorization:…] ADDRESS list|describe|call`."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.database = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def list(self) -> list[str]:
        return sorted(self.database.get_services())

    def describe(self, method: str) -> tuple[str, str]:
        service, _, name = method.rpartition(".")
        descriptor = self.pool.FindServiceByName(service).FindMethodByName(name)
        return descriptor.input_type.full_name, descriptor.output_type.full_name

    def call(self, method: str, body: str, token: str | None) -> dict[str, Any]:
        service, _, name = method.rpartition(".")
        descriptor = self.pool.FindServiceByName(service).FindMethodByName(name)
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        request = json_format.Parse(body, request_class())
        invoke = self.channel.unary_unary(
            f"/{service}/{name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        response = invoke(request, metadata=metadata, timeout=5)
        result: dict[str, Any] = json.loads(json_format.MessageToJson(response))
        return result

    def close(self) -> None:
        self.channel.close()


async def test_list_describe_and_invoke_with_json(control_server: ControlServer) -> None:
    # The client is synchronous, like grpcurl; the service runs on this test's event loop.
    def session() -> tuple[list[str], tuple[str, str], dict[str, Any], dict[str, Any]]:
        grpcurl = Grpcurl(f"127.0.0.1:{control_server.port}")
        try:
            services = grpcurl.list()
            shape = grpcurl.describe("gatez.v1.ControlService.CreateTenant")
            created = grpcurl.call(
                "gatez.v1.ControlService.CreateTenant",
                '{"tenant": {"id": "acme", "displayName": "Acme"}}',
                ADMIN_TOKEN,
            )
            listed = grpcurl.call("gatez.v1.ControlService.ListTenants", "{}", ADMIN_TOKEN)
            return services, shape, created, listed
        finally:
            grpcurl.close()

    services, shape, created, listed = await asyncio.to_thread(session)

    assert {"gatez.v1.ControlService", "gatez.v1.DataPlaneService", "grpc.health.v1.Health"} <= set(
        services
    )
    assert shape == ("gatez.v1.CreateTenantRequest", "gatez.v1.CreateTenantResponse")
    assert created["tenant"]["id"] == "acme"
    assert int(created["policyVersion"]) == 1
    assert [t["id"] for t in listed["tenants"]] == ["acme"]


async def test_reflection_call_without_the_token_is_refused(control_server: ControlServer) -> None:
    def session() -> grpc.RpcError:
        grpcurl = Grpcurl(f"127.0.0.1:{control_server.port}")
        try:
            grpcurl.call("gatez.v1.ControlService.ListTenants", "{}", None)
        except grpc.RpcError as error:
            return error
        finally:
            grpcurl.close()
        raise AssertionError("the call went through without the admin token")

    error = await asyncio.to_thread(session)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_refused_change_reads_as_a_status_and_a_message(
    control_server: ControlServer,
) -> None:
    def session() -> grpc.RpcError:
        grpcurl = Grpcurl(f"127.0.0.1:{control_server.port}")
        try:
            grpcurl.call(
                "gatez.v1.ControlService.CreateTenant",
                '{"tenant": {"id": "Not An Id"}}',
                ADMIN_TOKEN,
            )
        except grpc.RpcError as error:
            return error
        finally:
            grpcurl.close()
        raise AssertionError("an invalid tenant id was accepted")

    error = await asyncio.to_thread(session)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Not An Id" in (error.details() or "")
