"""A small Django project for kaffi.contrib.django's tests (tests/contrib/test_django.py)."""
