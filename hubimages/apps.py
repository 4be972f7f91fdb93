from django.apps import AppConfig


class HubimagesConfig(AppConfig):
    name = "hubimages"
    verbose_name = "hubimages"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from hubimages.accounts import signin

        user_logged_in.connect(signin.record_sign_in, dispatch_uid="hubimages-audit-sign-in")
        user_login_failed.connect(
            signin.record_failed_sign_in, dispatch_uid="hubimages-audit-sign-in-failed"
        )
