"""python -m services.ingest"""

from services.common.main import run_service
from services.ingest.server import create
from services.ingest.settings import Settings

if __name__ == "__main__":
    run_service("ingest", Settings.from_env, create)
