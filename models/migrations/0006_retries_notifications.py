from tortoise import migrations
from tortoise.migrations import operations as ops
from models.status import StepStatus
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index


class StateOnlyAlterField(ops.AlterField):
    """The status enum gained a member: its column (CHAR 16) is unchanged, only the recorded description
    is. The generated SQLite table rebuild would drop the table that attempts cascade from."""

    async def database_forward(self, app_label, old_state, new_state, state_editor=None):
        return None

    async def database_backward(self, app_label, old_state, new_state, state_editor=None):
        return None


class AddCounter(ops.AddField):
    """A NOT NULL integer column with DEFAULT 0 in the table, so that existing rows get it (SQLite refuses a
    NOT NULL column without a default on a table with rows)."""

    async def database_forward(self, app_label, old_state, new_state, state_editor=None):
        sql = f'ALTER TABLE "steps" ADD COLUMN "{self.name}" INT NOT NULL DEFAULT 0'
        await ops.RunSQL(sql).database_forward(app_label, old_state, new_state, state_editor)


class Migration(migrations.Migration):
    dependencies = [('models', '0005_read_indexes')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Notification',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('run', fields.ForeignKeyField('models.Run', source_field='run_id', db_constraint=True, to_field='id', related_name='notifications', on_delete=OnDelete.CASCADE)),
                ('event', fields.CharField(max_length=40)),
                ('step_key', fields.CharField(null=True, max_length=100)),
                ('detail', fields.TextField(null=True, unique=False)),
                ('run_status', fields.CharField(max_length=16)),
                ('error', fields.TextField(null=True, unique=False)),
                ('step_status', fields.CharField(null=True, max_length=16)),
                ('fanned_out', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'notifications', 'app': 'models', 'indexes': [Index(fields=['fanned_out', 'id'], name='notifications_fan_out'), Index(fields=['run_id'], name='notifications_run_id')], 'pk_attr': 'id', 'table_description': 'The outbox: one row per notifiable event, written in the commit of the transition that caused it.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Delivery',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('notification', fields.ForeignKeyField('models.Notification', source_field='notification_id', db_constraint=True, to_field='id', related_name='deliveries', on_delete=OnDelete.CASCADE)),
                ('run_id', fields.IntField()),
                ('event', fields.CharField(max_length=40)),
                ('target_key', fields.CharField(max_length=64)),
                ('target_label', fields.CharField(max_length=300)),
                ('channel', fields.CharField(max_length=16)),
                ('status', fields.CharField(max_length=16)),
                ('attempts', fields.IntField(default=0)),
                ('next_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('lease_until', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('last_error', fields.TextField(null=True, unique=False)),
                ('response_code', fields.IntField(null=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('delivered_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'deliveries', 'app': 'models', 'unique_together': (('notification', 'target_key'),), 'indexes': [Index(fields=['status', 'next_at'], name='deliveries_due')], 'pk_attr': 'id', 'table_description': 'One notification to one target, retried with backoff until delivered or given up. The target is'},
            bases=['Model'],
        ),
        StateOnlyAlterField(
            model_name='Step',
            name='status',
            field=fields.CharEnumField(default=StepStatus.PENDING, description='PENDING: pending\nRUNNING: running\nWAITING: waiting\nCOMPLETED: completed\nFAILED: failed\nCANCELLED: cancelled\nRETRYING: retrying', enum_type=StepStatus, max_length=16),
        ),
        AddCounter(
            model_name='Step',
            name='retries',
            field=fields.IntField(default=0),
        ),
        AddCounter(
            model_name='Step',
            name='retries_used',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='Step',
            name='retry_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddIndex(
            model_name='Step',
            index=Index(fields=['status', 'retry_at'], name='steps_status_retry_at'),
        ),
    ]
