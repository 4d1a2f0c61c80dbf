"""Who may call each IngestService method: the one place the ingest service declares it.

Every method takes a tenant's API key, or the service token of the teacher or the trainer
acting for the tenant. Enforced by the auth interceptor.
"""

from __future__ import annotations

from distillery.ingest.v1 import ingest_pb2
from services.common.auth import Access, AccessTable

SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]

ACCESS = AccessTable(
    service=SERVICE.full_name,
    methods={
        "UploadDataset": Access.TENANT,  # the teacher stores generated datasets so
        "CreateUploadUrl": Access.TENANT,
        "RegisterUpload": Access.TENANT,
        "GetUploadStatus": Access.TENANT,
        "ValidateDataset": Access.TENANT,
        "GetDataset": Access.TENANT,
        "ListDatasets": Access.TENANT,
        "SplitDataset": Access.TENANT,  # the trainer splits a run's dataset so
        "ReadDatasetRows": Access.TENANT,
        "ImportTools": Access.TENANT,
        "ListTools": Access.TENANT,
        "DeleteTool": Access.TENANT,
        # captured traffic: the gateway stores it; the tenant lists it and builds datasets from it
        "CaptureTraffic": Access.SERVICE,
        "ListTraffic": Access.TENANT,
        "CreateDatasetFromTraffic": Access.TENANT,
    },
    why={
        "CaptureTraffic": 'traffic is captured by the gateway for requests that ask it ("store": true); '
        "send the request through the gateway's /v1/chat/completions with store set"
    },
)
