from tortoise import migrations
from tortoise.migrations import operations as ops
from models.status import AttemptStatus, RunStatus, StepStatus
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='Run',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('workflow', fields.CharField(max_length=200)),
                ('definition', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('inputs', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('status', fields.CharEnumField(default=RunStatus.QUEUED, description='QUEUED: queued\nRUNNING: running\nWAITING: waiting\nCOMPLETED: completed\nFAILED: failed\nCANCELLED: cancelled', enum_type=RunStatus, max_length=16)),
                ('error', fields.TextField(null=True, unique=False)),
                ('actor', fields.CharField(max_length=200)),
                ('owner', fields.CharField(null=True, max_length=200)),
                ('heartbeat_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('recoveries', fields.IntField(default=0)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('started_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'runs', 'app': 'models', 'indexes': [Index(fields=['status', 'heartbeat_at'], name='runs_status_heartbeat'), Index(fields=['workflow', 'id'], name='runs_workflow_id')], 'pk_attr': 'id', 'table_description': 'One execution of a workflow with inputs, with a snapshot of the definition it started with.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Event',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('run', fields.ForeignKeyField('models.Run', source_field='run_id', db_constraint=True, to_field='id', related_name='events', on_delete=OnDelete.CASCADE)),
                ('step_key', fields.CharField(null=True, max_length=100)),
                ('attempt', fields.IntField(null=True)),
                ('kind', fields.CharField(max_length=40)),
                ('from_status', fields.CharField(null=True, max_length=16)),
                ('to_status', fields.CharField(null=True, max_length=16)),
                ('actor', fields.CharField(null=True, max_length=200)),
                ('message', fields.TextField(null=True, unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'events', 'app': 'models', 'indexes': [Index(fields=['run_id', 'id'], name='events_run_id')], 'pk_attr': 'id', 'table_description': 'Append-only record of a transition or a human action. Its id orders the timeline of the run.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Step',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('run', fields.ForeignKeyField('models.Run', source_field='run_id', db_constraint=True, to_field='id', related_name='steps', on_delete=OnDelete.CASCADE)),
                ('key', fields.CharField(max_length=100)),
                ('label', fields.CharField(max_length=200)),
                ('position', fields.IntField()),
                ('kind', fields.CharField(max_length=40)),
                ('needs', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('status', fields.CharEnumField(default=StepStatus.PENDING, description='PENDING: pending\nRUNNING: running\nWAITING: waiting\nCOMPLETED: completed\nFAILED: failed\nCANCELLED: cancelled', enum_type=StepStatus, max_length=16)),
                ('attempt', fields.IntField(default=0)),
                ('stale', fields.BooleanField(default=False)),
                ('stale_reason', fields.TextField(null=True, unique=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'steps', 'app': 'models', 'unique_together': (('run', 'key'),), 'pk_attr': 'id', 'table_description': 'One node of a run. What it produced lives on its attempts (the current one is `attempt`).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Attempt',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('run', fields.ForeignKeyField('models.Run', source_field='run_id', db_constraint=True, to_field='id', related_name='attempts', on_delete=OnDelete.CASCADE)),
                ('step', fields.ForeignKeyField('models.Step', source_field='step_id', db_constraint=True, to_field='id', related_name='attempts', on_delete=OnDelete.CASCADE)),
                ('number', fields.IntField()),
                ('status', fields.CharEnumField(default=AttemptStatus.RUNNING, description='RUNNING: running\nCOMPLETED: completed\nFAILED: failed\nCANCELLED: cancelled', enum_type=AttemptStatus, max_length=16)),
                ('outputs', fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads)),
                ('selected_index', fields.IntField(null=True)),
                ('partial_output', fields.TextField(null=True, unique=False)),
                ('error', fields.TextField(null=True, unique=False)),
                ('error_detail', fields.TextField(null=True, unique=False)),
                ('consumed', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('logs', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('progress', fields.FloatField(null=True)),
                ('progress_message', fields.TextField(null=True, unique=False)),
                ('owner', fields.CharField(null=True, max_length=200)),
                ('started_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'attempts', 'app': 'models', 'unique_together': (('step', 'number'),), 'indexes': [Index(fields=['run_id', 'id'], name='attempts_run_id')], 'pk_attr': 'id', 'table_description': 'One execution of a step. It owns everything the execution produced and is never reused by a retry.'},
            bases=['Model'],
        ),
    ]
