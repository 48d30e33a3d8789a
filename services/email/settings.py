from shared import HeraldSettings


class Settings(HeraldSettings):
    service_name: str = "email"
    port: int = 8103
