"""Who may call each TrainerService method: the one place the trainer declares it.

Tenants drive their runs with their API keys; a training job pushes its run's progress
with the run token it was started with (checked by the verifier ``server.py`` passes).
Enforced by the auth interceptor.
"""

from __future__ import annotations

from distillery.trainer.v1 import trainer_pb2
from services.common.auth import Access, AccessTable

SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]

ACCESS = AccessTable(
    service=SERVICE.full_name,
    methods={
        "CreateRun": Access.TENANT,
        "GetRun": Access.TENANT,
        "ListRuns": Access.TENANT,
        "CancelRun": Access.TENANT,
        "WatchRun": Access.TENANT,
        "GetRunLogs": Access.TENANT,
        "ReportRunEvents": Access.RUN,
        "PauseRun": Access.TENANT,
        "ResumeRun": Access.TENANT,
        "ListRecipes": Access.TENANT,
        "GetRecipe": Access.TENANT,
        "EstimateRun": Access.TENANT,
        "CreateRubric": Access.TENANT,
        "GetRubric": Access.TENANT,
        "ListRubrics": Access.TENANT,
        "ValidateRubric": Access.TENANT,
    },
)
