"""Django management commands of :mod:`kaffi.contrib.django`."""
