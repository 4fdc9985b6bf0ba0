from tests.integration.api.factories import auth, client, settings, token

__all__ = ["auth", "client", "settings", "token"]
