"""Ids as 64-bit integers on PostgreSQL: every serial id, the columns that refer to one, and their
sequences (a serial's sequence stops at 2^31 - 1 however wide its column). SQLite's INTEGER is 64-bit
already: there, only the recorded field types change."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

# Each table's id (when it has one) and the columns that hold another table's id.
WIDENED = {
    "runs": ["id"],
    "steps": ["id", "run_id"],
    "attempts": ["id", "run_id", "step_id"],
    "llm_usage": ["id", "run_id", "attempt_id"],
    "events": ["id", "run_id"],
    "users": ["id"],
    "api_tokens": ["id", "user_id"],
    "audit": ["id"],
    "schedule_states": ["id"],
    "schedule_fires": ["id", "run_id"],
    "notifications": ["id", "run_id"],
    "deliveries": ["id", "notification_id", "run_id"],
    "sign_in_failures": ["id"],
}


def _alter(kind: str) -> list[str]:
    """One ALTER TABLE per table (one rewrite each), then each id's sequence."""
    tables = [
        f'ALTER TABLE "{table}" ' + ", ".join(f'ALTER COLUMN "{column}" TYPE {kind}' for column in columns)
        for table, columns in WIDENED.items()
    ]
    sequences = [f"ALTER SEQUENCE \"{table}_id_seq\" AS {kind}" for table in WIDENED]
    return [*tables, *sequences] if kind == "BIGINT" else [*sequences, *tables]


class WidenIdsOnPostgres(ops.RunSQL):
    def __init__(self) -> None:
        super().__init__(_alter("BIGINT"), _alter("INTEGER"))

    async def database_forward(self, app_label, old_state, new_state, state_editor=None):
        if state_editor is not None and state_editor.client.capabilities.dialect == "postgres":
            await super().database_forward(app_label, old_state, new_state, state_editor)

    async def database_backward(self, app_label, old_state, new_state, state_editor=None):
        if state_editor is not None and state_editor.client.capabilities.dialect == "postgres":
            await super().database_backward(app_label, old_state, new_state, state_editor)


class StateOnlyAlterField(ops.AlterField):
    """The recorded field type changes; the columns are changed by `WidenIdsOnPostgres` (the generated
    SQLite table rebuild would drop the tables that cascade from it)."""

    async def database_forward(self, app_label, old_state, new_state, state_editor=None):
        return None

    async def database_backward(self, app_label, old_state, new_state, state_editor=None):
        return None


MODELS = [
    "Run",
    "Step",
    "Attempt",
    "LlmUsage",
    "Event",
    "User",
    "ApiToken",
    "AuditEntry",
    "ScheduleState",
    "ScheduleFire",
    "Notification",
    "Delivery",
    "SignInFailure",
]


class Migration(migrations.Migration):
    dependencies = [("models", "0010_log_times")]

    initial = False

    operations = [
        *(
            StateOnlyAlterField(
                model_name=model,
                name="id",
                field=fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True),
            )
            for model in MODELS
        ),
        StateOnlyAlterField(model_name="Delivery", name="run_id", field=fields.BigIntField()),
        WidenIdsOnPostgres(),
    ]
