"""A URLconf that serves nothing, for the system checks' tests."""

urlpatterns = []
