from shared import HeraldSettings


class Settings(HeraldSettings):
    service_name: str = "ingress"
    port: int = 8101
    max_batch: int = 500
