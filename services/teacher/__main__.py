"""python -m services.teacher"""

from services.common.main import run_service
from services.teacher.server import create
from services.teacher.settings import Settings

if __name__ == "__main__":
    run_service("teacher", Settings.from_env, create)
