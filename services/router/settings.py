from pathlib import Path

from shared import HeraldSettings

from .catalogue import DEFAULT_PATH


class Settings(HeraldSettings):
    service_name: str = "router"
    port: int = 8102
    catalogue_path: Path = DEFAULT_PATH
