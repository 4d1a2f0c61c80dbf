"""Who may call each TeacherService method: the one place the teacher declares it.

Every method takes a tenant's API key, or the service token of the trainer acting for the
tenant (it checks, creates and follows a run's generation job so, and has a rubric's judge
criteria scored). Enforced by the auth interceptor.
"""

from __future__ import annotations

from distillery.teacher.v1 import teacher_pb2
from services.common.auth import Access, AccessTable

SERVICE = teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"]

ACCESS = AccessTable(
    service=SERVICE.full_name,
    methods={
        "SetProviderKey": Access.TENANT,
        "ListProviderKeys": Access.TENANT,
        "DeleteProviderKey": Access.TENANT,
        "CheckGenerationJob": Access.TENANT,  # the trainer, when a run is created
        "EstimateJob": Access.TENANT,
        "CreateGenerationJob": Access.TENANT,
        "GetGenerationJob": Access.TENANT,
        "ListGenerationJobs": Access.TENANT,
        "CancelGenerationJob": Access.TENANT,
        "WatchGenerationJob": Access.TENANT,
        "DescribeTool": Access.TENANT,
        "JudgeAnswers": Access.TENANT,  # the trainer, when it validates a rubric and evaluates a run
        "Complete": Access.TENANT,  # the gateway's proxy mode, for the tenant of the request's key
    },
)
