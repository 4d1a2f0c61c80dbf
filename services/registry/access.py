"""Who may call each RegistryService method: the one place the registry declares it.

Enforced by the auth interceptor (``services.common.interceptors.AuthInterceptor``); the
servicer reads the caller it sets and checks no token itself.
"""

from __future__ import annotations

from distillery.registry.v1 import registry_pb2
from services.common.auth import Access, AccessTable

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]

# ReserveQuota and ReleaseQuota answer only the trainer service (the service token).
QUOTA_BY_SERVICE = (
    "slots are reserved and released by the trainer service for its runs; start a training run "
    "(distillery runs create), or free a slot by deleting a model (distillery models delete)"
)
MODELS_BY_SERVICE = (
    "it is called by the trainer service when a run ends; start a training run instead (distillery runs create)"
)

ACCESS = AccessTable(
    service=SERVICE.full_name,
    methods={
        # tenants and keys
        "CreateTenant": Access.ADMIN,
        "GetTenant": Access.ADMIN,
        "CreateApiKey": Access.ADMIN | Access.KEY,  # a tenant's key makes keys for its own tenant only
        "ListApiKeys": Access.TENANT,
        "RevokeApiKey": Access.TENANT,
        "AuthenticateKey": Access.OPEN,  # the other services check their callers' keys here
        "WhoAmI": Access.TENANT,
        "SetTenantTier": Access.ADMIN,
        # quota
        "GetQuota": Access.TENANT,
        "ReserveQuota": Access.SERVICE,
        "ReleaseQuota": Access.SERVICE,
        # models
        "RegisterModel": Access.SERVICE,
        "GetModel": Access.TENANT,
        "ListModels": Access.TENANT,
        "DeleteModel": Access.TENANT,
        "Generate": Access.TENANT,
        "GenerateStream": Access.TENANT,  # the gateway streams an answer so
        "Transcribe": Access.TENANT,
        "ReadImage": Access.TENANT,
        "GetSnippet": Access.TENANT,
        # deployments (the gateway reads them, with the service token and the tenant, to route)
        "DeployModel": Access.TENANT,
        "UndeployModel": Access.TENANT,
        "ListDeployments": Access.TENANT,
        "GetDeployment": Access.TENANT,
        # steering vectors
        "CreateVector": Access.TENANT,
        "ImportVector": Access.TENANT,
        "ListVectors": Access.TENANT,
        "GetVector": Access.TENANT,
        "DeleteVector": Access.TENANT,
        "ExportVector": Access.TENANT,
        # optimization profiles (the gateway reads one to apply it on a vLLM deployment)
        "SetProfile": Access.TENANT,
        "GetProfile": Access.TENANT,
        "ListProfiles": Access.TENANT,
        "DeleteProfile": Access.TENANT,
        # export
        "ExportModel": Access.TENANT,
        "ReadExportFile": Access.TENANT,
    },
    why={"ReserveQuota": QUOTA_BY_SERVICE, "ReleaseQuota": QUOTA_BY_SERVICE, "RegisterModel": MODELS_BY_SERVICE},
)
