"""An order and its receipt: what the test tasks read and write."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """An order a task confirms."""

    customer: models.CharField[str, str] = models.CharField(max_length=100)
    status: models.CharField[str, str] = models.CharField(max_length=20, default="new")
    total: models.IntegerField[int, int] = models.IntegerField(default=0)
    #: The pid of the worker process that confirmed it.
    confirmed_by: models.IntegerField[int | None, int | None] = models.IntegerField(null=True)


class Receipt(models.Model):
    """Written by ``confirm_order``; also where the connection tests record results."""

    order: models.ForeignKey[Order | None, Order | None] = models.ForeignKey(
        Order, on_delete=models.CASCADE, null=True
    )
    note: models.CharField[str, str] = models.CharField(max_length=200)
