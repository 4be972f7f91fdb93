from django.apps import AppConfig


class HubimagesConfig(AppConfig):
    name = "hubimages"
    verbose_name = "hubimages"
