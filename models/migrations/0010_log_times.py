"""Attempts keep when each log line was written: a list of epoch milliseconds parallel to `logs` (null on
attempts made before, whose lines have no time)."""

from orjson import loads
from tortoise import fields, migrations
from tortoise.fields.data import JSON_DUMPS
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0009_notify")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Attempt",
            name="log_times",
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
    ]
