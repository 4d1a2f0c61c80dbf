"""python -m services.registry"""

from services.common.main import run_service
from services.registry.server import create
from services.registry.settings import Settings

if __name__ == "__main__":
    run_service("registry", Settings.from_env, create)
