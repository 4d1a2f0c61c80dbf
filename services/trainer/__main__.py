"""python -m services.trainer"""

from services.common.main import run_service
from services.trainer.server import create
from services.trainer.settings import Settings

if __name__ == "__main__":
    run_service("trainer", Settings.from_env, create)
