"""Create (or update) a staff user who may use the WebSocket console.

    python manage.py console_user alice            # may view
    python manage.py console_user alice --close    # may also close sessions

The password is asked for twice, or read from the environment variable named by
--password-env (for scripts). It is never stored in settings.
"""

import getpass
import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create or update a staff user with the console's view (and close) permission."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--close", action="store_true",
                            help="Also grant the permission to close sessions.")
        parser.add_argument("--password-env", metavar="VARIABLE",
                            help="Read the password from this environment variable.")

    def handle(self, *args, username, close, password_env, **options):
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"${password_env} is empty or unset.")
        else:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The passwords differ.")
        if len(password) < 8:
            raise CommandError("Use a password of at least 8 characters.")
        user, created = get_user_model().objects.get_or_create(username=username)
        user.is_staff = True
        user.is_active = True
        user.set_password(password)
        user.save()
        codenames = ["view_console"] + (["close_sessions"] if close else [])
        permissions = Permission.objects.filter(content_type__app_label="wsmonitor",
                                                codename__in=codenames)
        if permissions.count() != len(codenames):
            raise CommandError("wsmonitor's permissions are missing: run `manage.py migrate`.")
        user.user_permissions.add(*permissions)
        self.stdout.write(f"{'Created' if created else 'Updated'} {username}: "
                          f"{', '.join(codenames)}.")
