"""``manage.py kaffi_worker`` (see :mod:`.kaffi_worker`)."""
