"""python -m services.gateway"""

from services.common.main import run_service
from services.gateway.server import create
from services.gateway.settings import Settings

if __name__ == "__main__":
    run_service("gateway", Settings.from_env, create)
