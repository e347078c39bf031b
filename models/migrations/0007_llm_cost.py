"""LLM usage rows say whether their counts were estimated (the server reported none) and what they cost
(from the price file, null without a price for the model)."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0006_retries_notifications")]

    initial = False

    operations = [
        ops.AddField(model_name="LlmUsage", name="estimated", field=fields.BooleanField(default=False)),
        ops.AddField(model_name="LlmUsage", name="cost", field=fields.FloatField(null=True)),
    ]
