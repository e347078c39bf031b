"""Shared state of several processes on one database: failed sign-ins counted in the database, secrets
every process shares (the one that signs session cookies), and on PostgreSQL a commit-ordered cursor over
the events (`events.tx`: the id of the transaction that wrote the row, so that a reader can tell the rows
no transaction still in flight can come before) and the process that wrote each (`events.origin`: the
writing connection's application name, so that a process does not publish its own events twice)."""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class AddEventTransactions(ops.RunSQL):
    """On PostgreSQL only: serial ids are not in commit order there (SQLite has one writer at a time)."""

    def __init__(self) -> None:
        super().__init__(
            [
                "ALTER TABLE events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id()",
                "ALTER TABLE events ADD COLUMN origin TEXT DEFAULT current_setting('application_name')",
                "CREATE INDEX events_tx ON events (tx, id)",
            ],
            ["DROP INDEX events_tx", "ALTER TABLE events DROP COLUMN origin", "ALTER TABLE events DROP COLUMN tx"],
        )

    async def database_forward(self, app_label, old_state, new_state, state_editor=None):
        if state_editor is not None and state_editor.client.capabilities.dialect == "postgres":
            await super().database_forward(app_label, old_state, new_state, state_editor)

    async def database_backward(self, app_label, old_state, new_state, state_editor=None):
        if state_editor is not None and state_editor.client.capabilities.dialect == "postgres":
            await super().database_backward(app_label, old_state, new_state, state_editor)


class Migration(migrations.Migration):
    dependencies = [("models", "0008_workers")]

    initial = False

    operations = [
        ops.CreateModel(
            name="SharedSecret",
            fields=[
                ("name", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ("value", fields.TextField(unique=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "shared_secrets",
                "app": "models",
                "pk_attr": "name",
                "table_description": "A secret every process of one database shares, such as the one that signs"
                " session cookies.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SignInFailure",
            fields=[
                ("id", fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ("key", fields.CharField(max_length=300)),
                ("at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "sign_in_failures",
                "app": "models",
                "indexes": [Index(fields=["key", "at"], name="sign_in_failures_key")],
                "pk_attr": "id",
                "table_description": "A failed sign-in, counted per key (a user name or an address) by every"
                " dashboard process alike.",
            },
            bases=["Model"],
        ),
        AddEventTransactions(),
    ]
