from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.CreateModel(
            name='LlmUsage',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('run', fields.ForeignKeyField('models.Run', source_field='run_id', db_constraint=True, to_field='id', related_name='llm_usage', on_delete=OnDelete.CASCADE)),
                ('attempt', fields.ForeignKeyField('models.Attempt', source_field='attempt_id', db_constraint=True, to_field='id', related_name='llm_usage', on_delete=OnDelete.CASCADE)),
                ('workflow', fields.CharField(max_length=200)),
                ('step_key', fields.CharField(max_length=100)),
                ('alternative', fields.IntField()),
                ('provider', fields.CharField(max_length=40)),
                ('model', fields.CharField(max_length=200)),
                ('max_tokens', fields.IntField()),
                ('prompt_tokens', fields.IntField()),
                ('completion_tokens', fields.IntField()),
                ('peak_call_tokens', fields.IntField()),
                ('finish_reason', fields.CharField(null=True, max_length=40)),
                ('truncated', fields.BooleanField()),
                ('continuations', fields.IntField(default=0)),
                ('outcome', fields.CharField(max_length=16)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'llm_usage', 'app': 'models', 'unique_together': (('attempt', 'alternative'),), 'indexes': [Index(fields=['workflow', 'step_key', 'created_at'], name='llm_usage_step_time'), Index(fields=['created_at'], name='llm_usage_time')], 'pk_attr': 'id', 'table_description': 'Tokens one alternative of an LLM attempt used against its limit, one row each, for monitoring.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Attempt',
            name='llm',
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
    ]
