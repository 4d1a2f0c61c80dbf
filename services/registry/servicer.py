"""RegistryService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format
from psycopg_pool import AsyncConnectionPool

from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common import auth
from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.common.objects import ObjectStore
from services.common.protoconv import Bounds, bounded, page_size, timestamp
from services.registry import deployments, exports, model_card, models, quotas, snippets, streaming, tenants
from services.registry import profile_messages as profile_pb
from services.registry.exports import Exporter
from services.registry.generate import Generator, artifact_prefix, is_ocr, is_speech, offered_tools
from services.registry.messages import (
    chat_message,
    deployment_pb,
    generate_response_pb,
    key_pb,
    model_pb,
    quota_pb,
    tenant_pb,
)
from services.registry.profile_vectors import for_request, vector_resolver
from services.registry.profiles import (
    MAX_STRENGTH,
    delete_profile,
    for_snippet,
    get_profile,
    list_profiles,
    set_profile,
)
from services.registry.vectors import Vector, Vectors, vector_pb

log = logging.getLogger(__name__)


# Beyond protoconv's defaults (ids, names, texts of 64 KiB, lists of 1,000, numbers >= 0): docs/api.md.
BOUNDS = Bounds(
    strings={"messages.content": 1_000_000, "tools_json": 65_536, "messages.tool_calls.arguments_json": 65_536,
             "artifact_uri": 4096,
             # A key of any shape is UNAUTHENTICATED (the services' auth asks here), not INVALID_ARGUMENT.
             "api_key": 8192},
    lists={"messages": 1_000, "tools_json": 256, "messages.tool_calls": 256},
    numbers={"temperature": (0.0, 2.0), "max_new_tokens": (0, 2048), "model_allowance": (0, 1_000_000),
             "replicas": (0, deployments.MAX_REPLICAS),
             # optimization profiles (profiles.py checks the rest, naming the field)
             "vectors.strength": (-MAX_STRENGTH, MAX_STRENGTH)},
)  # fmt: skip


@bounded(registry_pb2.DESCRIPTOR.services_by_name["RegistryService"], BOUNDS)
class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Who may call each method is declared in ``access.py`` and checked before the call."""

    def __init__(
        self, pool: AsyncConnectionPool, store: ObjectStore, generator: Generator, exporter: Exporter | None = None,
        deployer: deployments.Deployments | None = None, gateway_url: str = "",
    ) -> None:  # fmt: skip
        self.pool = pool
        self.store = store
        self.generator = generator
        # Steering vectors (vectors.py): rows, tensors in S3, loaded ones in memory; computed with generator's models.
        self.vectors = Vectors(pool, store, generator)
        self.exporter = exporter or Exporter(store, generator.cache_dir / ".exports")
        self.deployments = deployer or deployments.Deployments(pool, generator)
        # The gateway's base URL: deployments' endpoint (+ "/v1") and the snippets name it.
        self.gateway_url = gateway_url

    # --- tenants and keys ---

    async def CreateTenant(self, request: Any, context: Any) -> registry_pb2.Tenant:
        return tenant_pb(await tenants.create_tenant(self.pool, request.name, request.tier, request.model_allowance))

    async def GetTenant(self, request: Any, context: Any) -> registry_pb2.Tenant:
        return tenant_pb(await tenants.get_tenant(self.pool, request.id))

    async def CreateApiKey(self, request: Any, context: Any) -> registry_pb2.CreateApiKeyResponse:
        caller = auth.current_caller()
        if not auth.is_admin(caller):
            if request.tenant_id and request.tenant_id != caller.tenant_id:
                raise PermissionDenied("a tenant's key can only create keys for its own tenant")
            request.tenant_id = caller.tenant_id
        if not request.tenant_id:
            raise InvalidArgument("tenant_id is required", field="tenant_id")
        record, secret = await tenants.create_api_key(
            self.pool, request.tenant_id, request.name, store_traffic=request.store_traffic
        )
        return registry_pb2.CreateApiKeyResponse(key=key_pb(record), secret=secret)

    async def ListApiKeys(self, request: Any, context: Any) -> registry_pb2.ListApiKeysResponse:
        found = await tenants.list_api_keys(self.pool, auth.current_caller().tenant_id)
        return registry_pb2.ListApiKeysResponse(keys=[key_pb(k) for k in found])

    async def RevokeApiKey(self, request: Any, context: Any) -> registry_pb2.RevokeApiKeyResponse:
        record = await tenants.revoke_api_key(self.pool, auth.current_caller().tenant_id, request.id)
        return registry_pb2.RevokeApiKeyResponse(key=key_pb(record))

    async def AuthenticateKey(self, request: Any, context: Any) -> registry_pb2.AuthenticateKeyResponse:
        caller, store_traffic = await tenants.authenticate_key(self.pool, request.api_key)
        return registry_pb2.AuthenticateKeyResponse(
            tenant_id=caller.tenant_id, tier=caller.tier, key_id=caller.key_id, store_traffic=store_traffic
        )

    async def WhoAmI(self, request: Any, context: Any) -> registry_pb2.Tenant:
        return tenant_pb(await tenants.get_tenant(self.pool, auth.current_caller().tenant_id))

    async def SetTenantTier(self, request: Any, context: Any) -> registry_pb2.Tenant:
        return tenant_pb(await tenants.set_tier(self.pool, request.tenant_id, request.tier, request.model_allowance))

    # --- quota ---

    async def GetQuota(self, request: Any, context: Any) -> registry_pb2.Quota:
        return quota_pb(await quotas.get_quota(self.pool, auth.current_caller().tenant_id))

    async def ReserveQuota(self, request: Any, context: Any) -> registry_pb2.Reservation:
        tenant_id = auth.current_caller().tenant_id
        if not request.run_id:
            raise InvalidArgument("run_id is required", field="run_id")
        state = await quotas.reserve(self.pool, tenant_id, request.run_id)
        return registry_pb2.Reservation(run_id=request.run_id, state=state)

    async def ReleaseQuota(self, request: Any, context: Any) -> registry_pb2.Reservation:
        tenant_id = auth.current_caller().tenant_id
        state = await quotas.release(self.pool, tenant_id, request.run_id)
        return registry_pb2.Reservation(run_id=request.run_id, state=state)

    # --- models ---

    async def RegisterModel(self, request: Any, context: Any) -> registry_pb2.Model:
        tenant_id = auth.current_caller().tenant_id
        new = models.NewModel(
            run_id=request.run_id, name=request.name, path=request.path, base_model=request.base_model,
            artifact_kind=request.artifact_kind, artifact_uri=request.artifact_uri, metrics=dict(request.metrics),
            training_config=json_format.MessageToDict(request.training_config), tools_json=list(request.tools_json),
        )  # fmt: skip
        return model_pb(await models.register(self.pool, tenant_id, new))

    async def GetModel(self, request: Any, context: Any) -> registry_pb2.Model:
        model = await models.get(self.pool, auth.current_caller().tenant_id, request.id)
        found = model_pb(model)
        found.card = model_card.render(model)
        for path, size in await asyncio.to_thread(exports.artifacts_of, self.store, model):
            found.artifacts.add(path=path, size_bytes=size)
        return found

    async def ListModels(self, request: Any, context: Any) -> registry_pb2.ListModelsResponse:
        found, next_token = await models.list_page(
            self.pool, auth.current_caller().tenant_id, page_size(request.page), request.page.page_token
        )
        return registry_pb2.ListModelsResponse(
            models=[model_pb(m) for m in found], page={"next_page_token": next_token}
        )

    async def DeleteModel(self, request: Any, context: Any) -> registry_pb2.DeleteModelResponse:
        model = await models.delete(self.pool, auth.current_caller().tenant_id, request.id, force=request.force)
        await self.generator.forget(model.id)
        try:
            prefix = artifact_prefix(model.artifact_uri, self.store.bucket, model.tenant_id)
        except FailedPrecondition:  # never delete outside the tenant's own prefix
            log.warning("model %s: artifacts at %s left in place", model.id, model.artifact_uri)
        else:
            await asyncio.to_thread(self.store.delete_prefix, prefix)
        await asyncio.to_thread(self.store.delete_prefix, exports.exports_prefix(model.tenant_id, model.id))
        return registry_pb2.DeleteModelResponse()

    async def Generate(self, request: Any, context: Any) -> registry_pb2.GenerateResponse:
        tenant_id = auth.current_caller().tenant_id
        model = await models.get(self.pool, tenant_id, request.model_id)
        applied, steering = await for_request(
            self.pool, self.vectors, tenant_id, model, profile_pb.overrides_of(request)
        )
        reply = await self.generator.generate(
            model,
            [chat_message(m) for m in request.messages],
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            tools=offered_tools(model, request.model_tools, request.tools_json),
            settings=applied.sampling,
            steering=steering,
        )
        response = generate_response_pb(reply, request.return_prompt_token_ids)
        profile_pb.applied_into(response, applied, reply.sampling)
        return response

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[registry_pb2.GenerateChunk]:
        tenant_id = auth.current_caller().tenant_id
        model = await models.get(self.pool, tenant_id, request.model_id)
        applied, steering = await for_request(
            self.pool, self.vectors, tenant_id, model, profile_pb.overrides_of(request)
        )
        written = streaming.stream(
            self.generator,
            model,
            [chat_message(m) for m in request.messages],
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            tools=offered_tools(model, request.model_tools, request.tools_json),
            settings=applied.sampling,
            steering=steering,
        )
        async for item in written:
            if isinstance(item, str):
                yield registry_pb2.GenerateChunk(delta=item)
            else:
                final = generate_response_pb(item, request.return_prompt_token_ids)
                profile_pb.applied_into(final, applied, item.sampling)
                yield registry_pb2.GenerateChunk(final=final)

    async def Transcribe(self, request: Any, context: Any) -> registry_pb2.TranscribeResponse:
        model = await models.get(self.pool, auth.current_caller().tenant_id, request.model_id)
        found = await self.generator.transcribe(model, request.audio, request.language)
        return registry_pb2.TranscribeResponse(
            text=found.text, language=found.language, language_probability=found.language_probability,
            duration_s=found.duration_s, latency_ms=found.latency_ms,
        )  # fmt: skip

    async def ReadImage(self, request: Any, context: Any) -> registry_pb2.ReadImageResponse:
        model = await models.get(self.pool, auth.current_caller().tenant_id, request.model_id)
        found = await self.generator.read_image(model, request.image, request.prompt)
        return registry_pb2.ReadImageResponse(
            text=found.text, prompt=found.prompt, width=found.width, height=found.height, latency_ms=found.latency_ms
        )

    async def GetSnippet(self, request: Any, context: Any) -> registry_pb2.Snippet:
        tenant_id = auth.current_caller().tenant_id
        model = await models.get(self.pool, tenant_id, request.model_id)
        text = not (is_speech(model) or is_ocr(model))
        profile = await for_snippet(self.pool, tenant_id, model, request.profile) if text else None
        written = snippets.for_model(
            model.id, request.language, gateway_url=self.gateway_url, speech=is_speech(model), ocr=is_ocr(model),
            profile=profile, inline=request.inline, custom=request.custom,
        )  # fmt: skip
        return registry_pb2.Snippet(snippets=written)

    # --- steering vectors (vectors.py) ---

    async def CreateVector(self, request: Any, context: Any) -> registry_pb2.Vector:
        tenant_id = auth.current_caller().tenant_id
        model = await models.get(self.pool, tenant_id, request.model_id)
        found = await self.vectors.create(
            tenant_id, model, request.name, [(p.prompt, p.positive, p.negative) for p in request.pairs],
            list(request.layers), request.method, request.description,
        )  # fmt: skip
        return vector_pb(found)

    async def ImportVector(self, request: Any, context: Any) -> registry_pb2.Vector:
        tenant_id = auth.current_caller().tenant_id
        model = await models.get(self.pool, tenant_id, request.model_id)
        found = await self.vectors.import_file(
            tenant_id, model, request.name, request.data, request.format, request.description
        )
        return vector_pb(found)

    async def ListVectors(self, request: Any, context: Any) -> registry_pb2.ListVectorsResponse:
        tenant_id = auth.current_caller().tenant_id
        model = await models.get(self.pool, tenant_id, request.model_id) if request.model_id else None
        found = await self.vectors.list_for(tenant_id, model)
        return registry_pb2.ListVectorsResponse(vectors=[vector_pb(v) for v in found])

    async def _vector(self, request: Any) -> tuple[str, Vector]:
        tenant_id = auth.current_caller().tenant_id
        model = await models.get(self.pool, tenant_id, request.model_id) if request.model_id else None
        return tenant_id, await self.vectors.get(tenant_id, request.vector_id, model)

    async def GetVector(self, request: Any, context: Any) -> registry_pb2.Vector:
        return vector_pb((await self._vector(request))[1])

    async def DeleteVector(self, request: Any, context: Any) -> registry_pb2.DeleteVectorResponse:
        tenant_id, found = await self._vector(request)
        await self.vectors.delete(tenant_id, found)
        return registry_pb2.DeleteVectorResponse()

    async def ExportVector(self, request: Any, context: Any) -> registry_pb2.ExportVectorResponse:
        data, filename = await self.vectors.export((await self._vector(request))[1], request.format)
        return registry_pb2.ExportVectorResponse(data=data, filename=filename)

    # --- optimization profiles (profiles.py) ---

    async def SetProfile(self, request: Any, context: Any) -> registry_pb2.Profile:
        tenant_id = auth.current_caller().tenant_id
        found = await set_profile(
            self.pool, tenant_id, request.model_id, request.name, profile_pb.attached_of(request.vectors),
            profile_pb.sampling_of(request.sampling), vector_resolver(self.vectors, tenant_id),
        )  # fmt: skip
        return profile_pb.profile_pb(found)

    async def GetProfile(self, request: Any, context: Any) -> registry_pb2.Profile:
        found = await get_profile(self.pool, auth.current_caller().tenant_id, request.model_id, request.name)
        return profile_pb.profile_pb(found)

    async def ListProfiles(self, request: Any, context: Any) -> registry_pb2.ListProfilesResponse:
        found = await list_profiles(self.pool, auth.current_caller().tenant_id, request.model_id)
        return registry_pb2.ListProfilesResponse(profiles=[profile_pb.profile_pb(p) for p in found])

    async def DeleteProfile(self, request: Any, context: Any) -> registry_pb2.DeleteProfileResponse:
        await delete_profile(self.pool, auth.current_caller().tenant_id, request.model_id, request.name)
        return registry_pb2.DeleteProfileResponse()

    # --- export ---

    async def ExportModel(self, request: Any, context: Any) -> registry_pb2.Export:
        model = await models.get(self.pool, auth.current_caller().tenant_id, request.model_id)
        built = await self.exporter.export(model, request.format)
        files = [
            registry_pb2.ExportFile(path=f.path, size_bytes=f.size_bytes, sha256=f.sha256, url=built.urls[f.path])
            for f in built.files
        ]
        return registry_pb2.Export(
            model_id=model.id, format=request.format, files=files, url_expires_at=timestamp(built.expires_at)
        )

    async def ReadExportFile(self, request: Any, context: Any) -> AsyncIterator[registry_pb2.ExportChunk]:
        model = await models.get(self.pool, auth.current_caller().tenant_id, request.model_id)
        async for data, offset, size in self.exporter.read(model, request.format, request.path, request.offset):
            yield registry_pb2.ExportChunk(data=data, offset=offset, size_bytes=size)

    # --- deployments ---

    @property
    def endpoint(self) -> str:
        return f"{self.gateway_url}/v1" if self.gateway_url else ""

    async def DeployModel(self, request: Any, context: Any) -> registry_pb2.Deployment:
        found = await self.deployments.deploy(
            auth.current_caller().tenant_id, request.model_id, request.replicas, request.engine
        )
        return deployment_pb(found, self.endpoint)

    async def UndeployModel(self, request: Any, context: Any) -> registry_pb2.Deployment:
        found = await self.deployments.undeploy(auth.current_caller().tenant_id, request.model_id)
        return deployment_pb(found, self.endpoint)

    async def ListDeployments(self, request: Any, context: Any) -> registry_pb2.ListDeploymentsResponse:
        found = await self.deployments.list(auth.current_caller().tenant_id)
        return registry_pb2.ListDeploymentsResponse(deployments=[deployment_pb(d, self.endpoint) for d in found])

    async def GetDeployment(self, request: Any, context: Any) -> registry_pb2.Deployment:
        found = await self.deployments.get(auth.current_caller().tenant_id, request.model_id)
        return deployment_pb(found, self.endpoint)
