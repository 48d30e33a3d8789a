from shared import HeraldSettings


class Settings(HeraldSettings):
    service_name: str = "push"
    port: int = 8105
