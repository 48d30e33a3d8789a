from shared import HeraldSettings


class Settings(HeraldSettings):
    service_name: str = "inapp"
    port: int = 8106
    inbox_page_max: int = 100
