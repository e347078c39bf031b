"""Engine processes with leases on the database clock (`workers`), named leases such as the leader's
(`leases`), and a partial index of the queued runs that engines claim."""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0007_llm_cost")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Worker",
            fields=[
                ("id", fields.CharField(primary_key=True, max_length=64)),
                ("host", fields.CharField(max_length=255)),
                ("pid", fields.IntField()),
                ("started_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("version", fields.CharField(max_length=40)),
                ("lease_until", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "workers",
                "app": "models",
                "indexes": [Index(fields=["lease_until"], name="workers_lease_until")],
                "pk_attr": "id",
                "table_description": "An engine process (a server, a worker, a headless run) on a database shared"
                " by several processes.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Lease",
            fields=[
                ("name", fields.CharField(primary_key=True, max_length=64)),
                ("holder", fields.CharField(max_length=64)),
                ("lease_until", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("acquired_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "leases",
                "app": "models",
                "pk_attr": "name",
                "table_description": "A named lease on the database clock, held by one process at a time.",
            },
            bases=["Model"],
        ),
        # Engines claim the oldest queued runs: a small index that holds only those.
        ops.RunSQL(
            "CREATE INDEX runs_queued ON runs (id) WHERE status = 'queued'",
            reverse_sql="DROP INDEX runs_queued",
        ),
    ]
