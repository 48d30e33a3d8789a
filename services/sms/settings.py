from shared import HeraldSettings


class Settings(HeraldSettings):
    service_name: str = "sms"
    port: int = 8104
