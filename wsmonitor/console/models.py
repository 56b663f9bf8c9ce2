"""The console's permissions, declared on a model without a table."""

from django.db import models


class Console(models.Model):
    """Holds no rows: it exists for its two permissions."""

    # Explicit, so the migration does not depend on the project's DEFAULT_AUTO_FIELD.
    id = models.AutoField(primary_key=True)

    class Meta:
        managed = False
        app_label = "wsmonitor"
        default_permissions = ()
        permissions = [
            ("view_console", "Can view the WebSocket console"),
            ("close_sessions", "Can close WebSocket sessions from the console"),
        ]
