"""The shop's tasks, found by kaffi.contrib.django's autodiscovery."""

from __future__ import annotations

import os
import threading

from asgiref.sync import sync_to_async
from django.db import connection

from kaffi.contrib.django import app
from shop.models import Order, Receipt


@app.task(queue="shop")
def confirm_order(order_id: int) -> None:
    """Read the order, mark it confirmed by this process, write its receipt."""
    order = Order.objects.get(pk=order_id)
    order.status = "confirmed"
    order.confirmed_by = os.getpid()
    order.save()
    Receipt.objects.create(order=order, note=f"{order.customer} paid {order.total}")


@app.task
def drop_connection(label: str) -> None:
    """Close this thread's database connection under Django, as a database server that
    restarted or timed the connection out would (Django still believes it is open)."""
    Receipt.objects.create(note=f"{label} in thread {threading.get_ident()}")
    raw = connection.connection
    assert raw is not None
    raw.close()


@app.task
def count_receipts(label: str) -> None:
    """Query the database, then record the count and the thread."""
    count = Receipt.objects.count()
    Receipt.objects.create(note=f"{label} saw {count} in thread {threading.get_ident()}")


@app.task
async def count_receipts_async(label: str) -> None:
    """:func:`count_receipts` for an ``async def`` task, through Django's async ORM."""
    count = await Receipt.objects.acount()
    await Receipt.objects.acreate(note=f"{label} saw {count}")


@sync_to_async
def _drop_async_connection() -> None:
    raw = connection.connection
    if raw is not None:
        raw.close()


@app.task
async def drop_connection_async(label: str) -> None:
    """:func:`drop_connection` for an ``async def`` task."""
    await Receipt.objects.acreate(note=label)
    await _drop_async_connection()
